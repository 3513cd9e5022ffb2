package route

import (
	"errors"
	"testing"
)

func TestCheckPathAccepts(t *testing.T) {
	tests := []struct {
		name string
		path string
	}{
		{"root", "/"},
		{"one segment", "/my-repos"},
		{"nested", "/repos/keyward/keyward/issues"},
		{"trailing slash", "/a/b/"},
		{"dots inside a segment", "/v1.2/file.tar.gz"},
		{"three dots", "/..."},
		{"dot prefix", "/.well-known/x"},
		{"dot dot prefix", "/..a"},
		{"dot dot suffix", "/a.."},
		{"escaped space", "/a%20b"},
		{"escaped percent then text", "/100%25"},
		{"escaped unreserved letter", "/%41bc"},
		{"semicolon is data", "/a;b=c"},
		{"colon and at sign", "/user:me@host"},
		{"upper and lower case kept", "/ABC/abc"},
		{"utf-8 escaped", "/caf%C3%A9"},
		{"raw utf-8 byte", "/caf\xc3\xa9"},
		{"quadruple-encoded dot is beyond the policy", "/%2525252e%2525252e"},
		{"decoded percent that is no longer an escape", "/%25zz"},
		// Regression: a segment decoding to a lone "%" used to panic in
		// unescape (negative slice capacity) on the second round.
		{"escaped lone percent", "/%25"},
		{"escaped percent pair", "/x/%25%25"},
		// Overlong UTF-8 for "." (C0 AE) is invalid UTF-8, not a dot: Go
		// and RFC 3629 decoders never turn it into "..". CheckPath accepts
		// it as opaque bytes; TestUpstreamKeepsOverlongEscaped proves the
		// upstream path keeps it percent-encoded so no later hop can
		// mistake it for a dot segment.
		{"overlong utf-8 dots", "/%c0%ae%c0%ae"},
		{"overlong utf-8 dots uppercase", "/%C0%AE%C0%AE/x"},
		{"fullwidth full stop", "/%ef%bc%8e%ef%bc%8e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckPath(tt.path); err != nil {
				t.Errorf("CheckPath(%q) = %v, want nil", tt.path, err)
			}
		})
	}
}

func TestCheckPathRefuses(t *testing.T) {
	tests := []struct {
		name string
		path string
	}{
		{"empty", ""},
		{"relative", "a/b"},
		{"asterisk form", "*"},
		{"dot dot", "/a/../b"},
		{"dot dot at end", "/a/.."},
		{"dot", "/a/./b"},
		{"dot at end", "/a/."},
		{"leading dot dot", "/../etc/passwd"},
		{"encoded dot dot lower", "/a/%2e%2e/b"},
		{"encoded dot dot upper", "/a/%2E%2E/b"},
		{"encoded dot dot mixed case", "/a/%2E%2e/b"},
		{"half encoded dot dot", "/a/.%2e/b"},
		{"half encoded dot dot other half", "/a/%2e./b"},
		{"encoded single dot", "/a/%2e/b"},
		{"double-encoded dot dot", "/a/%252e%252e/b"},
		{"double-encoded dot dot upper", "/a/%252E%252E/b"},
		{"triple-encoded dot dot", "/a/%25252e%25252e/b"},
		{"triple-encoded dot", "/a/%25252e"},
		{"mixed encoding depths", "/a/%2e%252e"},
		{"encoded slash lower", "/a%2fb"},
		{"encoded slash upper", "/a%2Fb"},
		{"encoded slash traversal", "/a/..%2f..%2fetc"},
		{"double-encoded slash", "/a%252fb"},
		{"triple-encoded slash", "/a%25252fb"},
		{"encoded backslash", "/a%5cb"},
		{"encoded backslash upper", "/a%5Cb"},
		{"double-encoded backslash", "/a%255cb"},
		{"backslash", "/a\\b"},
		{"backslash traversal", "/..\\..\\etc"},
		{"double slash", "//evil.com/x"},
		{"double slash inside", "/a//b"},
		{"trailing double slash", "/a//"},
		{"newline", "/a\nb"},
		{"carriage return", "/a\rb"},
		{"tab", "/a\tb"},
		{"nul byte", "/a\x00b"},
		{"delete", "/a\x7fb"},
		{"encoded nul", "/a%00b"},
		{"encoded newline", "/a%0ab"},
		{"encoded carriage return", "/a%0D%0Ab"},
		{"encoded delete", "/a%7f"},
		{"double-encoded nul", "/a%2500"},
		{"invalid escape", "/a%zzb"},
		{"truncated escape", "/a%2"},
		{"lone percent", "/a%"},
		{"lone percent segment", "/%"},
		{"percent pair segment", "/%%"},
		{"percent triple segment", "/%%%"},
		{"percent at end of segment", "/a%/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPath(tt.path)
			if err == nil {
				t.Fatalf("CheckPath(%q) = nil, want an error", tt.path)
			}
			if !errors.Is(err, ErrBadPath) {
				t.Errorf("CheckPath(%q) = %v, want it to wrap ErrBadPath", tt.path, err)
			}
		})
	}
}

// TestUnescapeInvalid is a regression test: input with more '%' than room
// for their hex digits made unescape allocate a negative capacity and panic.
func TestUnescapeInvalid(t *testing.T) {
	tests := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{"%", "", false},
		{"%%", "", false},
		{"%%%", "", false},
		{"%2", "", false},
		{"a%", "", false},
		{"%25", "%", true},
		{"%2e%2E", "..", true},
		{"abc", "abc", true},
	}
	for _, tt := range tests {
		got, ok := unescape(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("unescape(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
	for _, p := range []string{"/%", "/a/%%", "/%25/x"} {
		if _, err := ParsePattern(p); err == nil && p != "/%25/x" {
			t.Errorf("ParsePattern(%q) accepted an invalid escape", p)
		}
	}
}
