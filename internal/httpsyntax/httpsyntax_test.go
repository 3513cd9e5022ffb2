package httpsyntax

import "testing"

func TestIsToken(t *testing.T) {
	for s, want := range map[string]bool{
		"GET": true, "X-Api-Key": true, "x_api_key": true, "!#$%&'*+-.^_`|~09azAZ": true,
		"": false, "X Api": false, "X:Api": false, "a\x00": false, "é": false, `"q"`: false, "a/b": false,
	} {
		if got := IsToken(s); got != want {
			t.Errorf("IsToken(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestHasToken(t *testing.T) {
	tests := []struct {
		values []string
		token  string
		want   bool
	}{
		{[]string{"close"}, "close", true},
		{[]string{"keep-alive, Close"}, "close", true},
		{[]string{"keep-alive", " \tclose\t "}, "close", true},
		{[]string{"closed"}, "close", false},
		{[]string{"x-close"}, "close", false},
		{nil, "close", false},
		{[]string{"trailers, deflate"}, "trailers", true},
	}
	for _, tt := range tests {
		if got := HasToken(tt.values, tt.token); got != tt.want {
			t.Errorf("HasToken(%q, %q) = %v, want %v", tt.values, tt.token, got, tt.want)
		}
	}
}
