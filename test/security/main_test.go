package security_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/keyward/keyward/internal/gatewaytest"
)

// TestMain runs the whole suite once per server engine (see
// gatewaytest.Engines): keyward's HTTP/1.1 server, net/http's, HTTP/1.1
// over TLS and HTTP/2 over TLS. Every gateway a test starts through the
// harness is served by the engine of the run, and a failing test's log
// names it. KEYWARD_ENGINES=h2 (comma-separated) runs only those engines.
// A test that does not apply to an engine skips there and says why.
func TestMain(m *testing.M) {
	engines, err := gatewaytest.EnginesFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := 0
	for _, e := range engines {
		gatewaytest.SetEngine(e)
		fmt.Printf("=== engine %s\n", e)
		if c := m.Run(); c != 0 {
			fmt.Printf("--- FAIL: engine %s\n", e)
			code = c
		}
	}
	os.Exit(code)
}
