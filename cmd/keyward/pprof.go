//go:build pprof

// Profiling build for performance work only (never in a release):
//
//	go build -tags pprof -o /tmp/keyward-pprof ./cmd/keyward
//	KEYWARD_PPROF=127.0.0.1:6060 /tmp/keyward-pprof serve -c bench/keyward.yaml
//	go tool pprof -seconds 5 http://127.0.0.1:6060/debug/pprof/profile
package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("KEYWARD_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
