package abort_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/keyward/keyward/internal/abort"
)

// otherKey is an unrelated context key.
type otherKey struct{}

func TestSupported(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"background", context.Background(), false},
		{"marked", abort.WithSupport(context.Background()), true},
		{"derived from a marked context", context.WithValue(abort.WithSupport(context.Background()), otherKey{}, 1), true},
		{"another key", context.WithValue(context.Background(), otherKey{}, 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := abort.Supported(tt.ctx); got != tt.want {
				t.Errorf("Supported = %v; want %v", got, tt.want)
			}
		})
	}
}

// TestSupportedUnderNetHTTP checks the other half of the contract against
// a real net/http server: its request contexts carry http.ServerContextKey.
func TestSupportedUnderNetHTTP(t *testing.T) {
	got := make(chan bool, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- abort.Supported(r.Context())
	}))
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if !<-got {
		t.Error("Supported = false under net/http's server; want true")
	}
}

// TestNotSupportedUnderRecorder: a handler called directly (a recorder in
// a test) must not be told it may panic.
func TestNotSupportedUnderRecorder(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if abort.Supported(r.Context()) {
		t.Error("Supported = true for a request no server runs; want false")
	}
}
