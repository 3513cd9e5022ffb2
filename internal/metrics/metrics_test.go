package metrics

import "testing"

func TestStatusLabel(t *testing.T) {
	for s, want := range map[int]string{0: "0", 200: "200", 499: "499", 599: "599", 600: "600", 1000: "1000", -1: "-1"} {
		if got := statusLabel(s); got != want {
			t.Errorf("statusLabel(%d) = %q, want %q", s, got, want)
		}
	}
}
