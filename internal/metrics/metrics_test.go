package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestStatusLabel(t *testing.T) {
	for s, want := range map[int]string{0: "0", 200: "200", 499: "499", 599: "599", 600: "600", 1000: "1000", -1: "-1"} {
		if got := statusLabel(s); got != want {
			t.Errorf("statusLabel(%d) = %q, want %q", s, got, want)
		}
	}
}

type fakeConns struct{ open, waiting int }

func (f fakeConns) Open() int         { return f.open }
func (f fakeConns) Waiting() int      { return f.waiting }
func (f fakeConns) Reclaimed() uint64 { return 7 }

func TestObserveConnections(t *testing.T) {
	m := New()
	m.ObserveConnections(fakeConns{open: 3, waiting: 1})
	m.ObserveConnections(fakeConns{open: 5, waiting: 2}) // a new listener replaces the first
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{"keyward_connections_open 5\n", "keyward_connections_waiting 2\n", "keyward_connections_reclaimed_total 7\n"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	var nilM *Metrics
	nilM.ObserveConnections(fakeConns{}) // safe on nil, like every method
}
