package httpsyntax

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

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

func TestValidHost(t *testing.T) {
	for s, want := range map[string]bool{
		"": true, "api.example.com": true, "api.example.com:8443": true, "127.0.0.1:80": true,
		"[::1]:8080": true, "[fe80::1%25eth0]": true, "a-b_c~d!$&'()*+,;=": true,
		"a b": false, "a\r\nX: y": false, "a\x00": false, "a\t": false, "a\x7f": false,
		"a/b": false, "a?b": false, "a#b": false, "user@host": false, `a\b`: false,
		"bücher.example": false, `"a"`: false, "a<b>": false, "a{b}": false, "a|b": false, "a^b": false, "a`b": false,
	} {
		if got := ValidHost(s); got != want {
			t.Errorf("ValidHost(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestValidHostMatchesStdlib sends every byte, inside a Host value, to
// net/http's server: ValidHost must accept exactly what it accepts, since
// keyward's server and client replace it and must not disagree with the
// parsers around them.
func TestValidHostMatchesStdlib(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	for b := range 256 {
		host := string([]byte{'a', byte(b), 'b'})
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("byte %#02x: reading net/http's answer: %v", b, err)
		}
		stdlib := res.StatusCode == http.StatusOK
		if got := ValidHost(host); got != stdlib {
			t.Errorf("byte %#02x: ValidHost = %v, net/http's server accepts it: %v", b, got, stdlib)
		}
	}
}
