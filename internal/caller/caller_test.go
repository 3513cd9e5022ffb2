package caller

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

type fixed struct {
	id  Identity
	err error
}

func (f fixed) Verify(context.Context, *http.Request) (Identity, error) { return f.id, f.err }

func refuse(r Reason) Verifier { return fixed{err: Errorf(r, nil)} }

func TestAny(t *testing.T) {
	ok := fixed{id: Identity{Kind: "visitors", ID: "v1"}}
	for _, tc := range []struct {
		name   string
		vs     []Verifier
		wantID string
		want   Reason
		status int
	}{
		{"first proven wins", []Verifier{refuse(Malformed), ok}, "v1", "", 0},
		{"all missing", []Verifier{refuse(Missing), refuse(Missing)}, "", Missing, 401},
		{"bad over missing", []Verifier{refuse(Missing), refuse(Malformed)}, "", Malformed, 401},
		{"recognised over unparsed", []Verifier{refuse(Malformed), refuse(Expired)}, "", Expired, 401},
		{"recognised first", []Verifier{refuse(Revoked), refuse(Malformed)}, "", Revoked, 401},
		{"claim failed is 403", []Verifier{refuse(ClaimFailed), refuse(Malformed)}, "", ClaimFailed, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := Any(tc.vs...).Verify(context.Background(), httptest.NewRequest("GET", "/", nil))
			if id.ID != tc.wantID || ReasonOf(err) != tc.want && err != nil {
				t.Fatalf("got %+v, %v", id, err)
			}
			if err == nil {
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Status() != tc.status {
				t.Errorf("status of %v, want %d", err, tc.status)
			}
		})
	}
}

func TestSource(t *testing.T) {
	for _, tc := range []struct {
		from, target string
		header       http.Header
		tok          string
		ok           bool
	}{
		{"", "/", http.Header{"Authorization": {"Bearer abc"}}, "abc", true},
		{"", "/", http.Header{"Authorization": {"BEARER  abc "}}, "abc", true},
		{"", "/", http.Header{"Authorization": {"Token abc"}}, "", true},
		{"", "/", http.Header{}, "", false},
		{"header:x-api-key", "/", http.Header{"X-Api-Key": {" kw_1 "}}, "kw_1", true},
		{"header:X-Api-Key", "/", http.Header{"X-Api-Key": {"a", "b"}}, "", true},
		{"cookie:s", "/", http.Header{"Cookie": {"s=abc; t=x"}}, "abc", true},
		{"cookie:s", "/", http.Header{"Cookie": {"s=a; s=b"}}, "", true},
		{"cookie:s", "/", http.Header{"Cookie": {"t=x"}}, "", false},
		{"query:tok", "/?tok=abc", nil, "abc", true},
		{"query:tok", "/?tok=a&tok=b", nil, "", true},
		{"query:tok", "/?x=1", nil, "", false},
	} {
		src, err := ParseSource(tc.from)
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("GET", tc.target, nil)
		r.Header = tc.header
		if r.Header == nil {
			r.Header = http.Header{}
		}
		tok, ok := src.Token(r)
		if tok != tc.tok || ok != tc.ok {
			t.Errorf("%s %v %s: got %q, %v; want %q, %v", tc.from, tc.header, tc.target, tok, ok, tc.tok, tc.ok)
		}
	}
	for _, bad := range []string{"header:", "header:a b", "body:x", "cookie", "query: "} {
		if _, err := ParseSource(bad); err == nil {
			t.Errorf("ParseSource(%q) accepted", bad)
		}
	}
	if s, _ := ParseSource("query:t"); s.Query() != "t" || !Bearer.IsHeader("authorization") {
		t.Error("Query/IsHeader")
	}
}
