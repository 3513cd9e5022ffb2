package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/keyward/keyward/internal/config"
	"github.com/keyward/keyward/internal/gateway"
)

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

// test shows what the gateway would send upstream for one request, by
// running the real request path with a transport that records instead of
// sending (or records and sends, with --send). Secret values are masked as
// [secret:NAME] in everything printed.
func test(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("test", stderr)
	var headers headerFlags
	fs.Var(&headers, "H", "request header 'Name: value' (repeatable)")
	body := fs.String("d", "", "request body")
	stageName := fs.String("stage", "", "stage to call (adds its prefix or host)")
	send := fs.Bool("send", false, "send the request upstream and print the response")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usageError{fmt.Errorf("want METHOD PATH, got %d arguments", len(pos))}
	}
	method, target := strings.ToUpper(pos[0]), pos[1]

	rec := &recordingTransport{send: *send}
	f, err := config.Load(*path)
	if err != nil {
		return err
	}
	// The recorder sends, with --send, through the config's outbound
	// policy, exactly as serve would.
	g, warns, err := gateway.Compile(f, gateway.Options{WrapTransport: func(policy http.RoundTripper) http.RoundTripper {
		rec.next = policy
		return rec
	}})
	for _, w := range warns {
		fmt.Fprintf(stderr, "%s:%d: warning: %s: %s\n", w.File, w.Line, w.Path, w.Msg)
	}
	if err != nil {
		return err
	}
	host := "keyward.test"
	if *stageName != "" {
		st, ok := stageOf(f, *stageName)
		if !ok {
			return usageError{fmt.Errorf("unknown stage %q", *stageName)}
		}
		if st.Host != "" {
			host = st.Host
		}
		if p := strings.TrimSuffix(st.Prefix, "/"); p != "" && !strings.HasPrefix(target, p+"/") {
			target = p + target
		}
	}
	if !strings.HasPrefix(target, "/") {
		return usageError{fmt.Errorf("path %q must start with /", target)}
	}
	req := httptest.NewRequestWithContext(ctx, method, target, strings.NewReader(*body))
	req.Host = host
	if *body == "" {
		req.Body = http.NoBody
		req.ContentLength = 0
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return usageError{fmt.Errorf("header %q: want 'Name: value'", h)}
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}

	p := func(format string, a ...any) { fmt.Fprint(stdout, g.Mask(fmt.Sprintf(format, a...))) }
	info, ok := g.Match(req)
	if !ok {
		p("no route matches %s %s\n", method, target)
	} else {
		p("route:    %s", info.Name)
		if info.Stage != "" {
			p(" (stage %s)", info.Stage)
		}
		p("\n")
		for _, kv := range info.Params {
			p("param:    %s = %q\n", kv[0], kv[1])
		}
		if ci := g.Caller(req); ci.Kinds != "" {
			switch {
			case ci.Refused != "":
				p("caller:   refused: %s (the route takes %s)\n", ci.Refused, ci.Kinds)
			case ci.ID == "":
				p("caller:   %s (no credential: the route's fallback limits)\n", ci.Kind)
			default:
				p("caller:   %s %q\n", ci.Kind, ci.ID)
			}
			if len(ci.Claims) > 0 {
				p("claims:   %s (verified)\n", strings.Join(ci.Claims, ", "))
			}
			if ci.LimitKey != "" {
				p("limits:   counted against %s\n", ci.LimitKey)
			}
		}
	}

	w := httptest.NewRecorder()
	g.ServeHTTP(w, req)

	if out := rec.req; out != nil {
		p("upstream: %s %s\n", out.Method, out.URL.String())
		for _, name := range sortedHeaderNames(out.Header) {
			for _, v := range out.Header[name] {
				p("  %s: %s\n", name, v)
			}
		}
		var dropped []string
		for _, name := range sortedHeaderNames(req.Header) {
			if why := info.DropReason(name); why != "" {
				dropped = append(dropped, fmt.Sprintf("  header %s: %s", name, why))
			}
		}
		q, _ := url.ParseQuery(req.URL.RawQuery)
		for _, name := range sortedKeys(q) {
			if why := info.QueryDropReason(name); why != "" {
				dropped = append(dropped, fmt.Sprintf("  query %s: %s", name, why))
			}
		}
		if len(dropped) > 0 {
			p("dropped from the client request:\n%s\n", strings.Join(dropped, "\n"))
		}
		if *body != "" || len(rec.body) > 0 {
			p("body from the client:\n  %s\nbody sent upstream:\n  %s\n", *body, rec.body)
		}
		if !*send {
			p("(not sent; add --send to send it)\n")
			return nil
		}
	}
	res := w.Result()
	p("response: %s\n", res.Status)
	for _, name := range sortedHeaderNames(res.Header) {
		for _, v := range res.Header[name] {
			p("  %s: %s\n", name, v)
		}
	}
	b, _ := io.ReadAll(res.Body)
	p("\n%s\n", bytes.TrimRight(b, "\n"))
	return nil
}

func stageOf(f *config.File, name string) (config.Stage, bool) {
	st, ok := f.Config.Stages[name]
	return st, ok
}

func sortedHeaderNames(h http.Header) []string {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

func sortedKeys(q url.Values) []string {
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// recordingTransport keeps the outbound request; it forwards it only when
// send is set, and otherwise answers 204 so the request path completes.
type recordingTransport struct {
	send bool
	next http.RoundTripper
	req  *http.Request
	body []byte
}

func (t *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.req = r.Clone(r.Context())
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		t.body = b
		r.Body = io.NopCloser(bytes.NewReader(b))
	}
	if t.send {
		return t.next.RoundTrip(r)
	}
	return &http.Response{StatusCode: http.StatusNoContent, Status: "204 No Content (not sent)",
		Header: http.Header{}, Body: http.NoBody, Request: r, ProtoMajor: 1, ProtoMinor: 1}, nil
}
