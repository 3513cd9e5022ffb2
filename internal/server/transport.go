package server

import (
	"net/http"
	"os"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/upstream"
)

// upstreamClientEnv selects the upstream client for side-by-side load runs
// (bench/run.sh) while internal/upstream is being proven: "upstream" picks
// it, anything else the net/http Transport. It is deliberately not a
// config field: once measured and reviewed, one client becomes the only
// one and this switch is deleted.
const upstreamClientEnv = "KEYWARD_UPSTREAM_CLIENT"

// upstreamTransport returns the process's upstream transport, chosen by
// upstreamClientEnv.
func upstreamTransport() http.RoundTripper {
	if os.Getenv(upstreamClientEnv) == "upstream" {
		return upstream.New(upstream.Options{})
	}
	return gateway.NewTransport()
}
