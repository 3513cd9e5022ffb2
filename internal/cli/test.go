package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
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
	noSecrets := fs.Bool("no-secrets", false, "treat every secret as present, with a placeholder value (for CI)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usageError{fmt.Errorf("want METHOD PATH, got %d arguments", len(pos))}
	}
	if *send && *noSecrets {
		return usageError{errors.New("--send with --no-secrets would send placeholders upstream")}
	}
	method, target := strings.ToUpper(pos[0]), pos[1]

	rec := &recordingTransport{send: *send}
	// The recorder sends, with --send, through the config's outbound
	// policy, exactly as serve would.
	f, g, err := compile(*path, *noSecrets, gateway.Options{WrapTransport: func(policy http.RoundTripper) http.RoundTripper {
		rec.next = policy
		return rec
	}}, stderr)
	if err != nil {
		return err
	}

	// The request as serve would get it: a URL's origin part is the Host
	// header (and is otherwise dropped), -H 'Host: ...' sets it too, and
	// --stage adds the stage's host or prefix.
	host, hostGiven := "keyward.test", false
	if i := strings.Index(target, "://"); i > 0 {
		u, err := url.Parse(target)
		if err != nil || u.Host == "" {
			return usageError{fmt.Errorf("%q is not a URL or a path", target)}
		}
		host, hostGiven, target = u.Host, true, u.RequestURI()
	}
	var reqHeaders []string
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return usageError{fmt.Errorf("header %q: want 'Name: value'", h)}
		}
		if strings.EqualFold(strings.TrimSpace(k), "Host") {
			host, hostGiven = strings.TrimSpace(v), true
			continue
		}
		reqHeaders = append(reqHeaders, h)
	}
	if *stageName != "" {
		st, ok := f.Config.Stages[*stageName]
		if !ok {
			return usageError{fmt.Errorf("unknown stage %q (%s)", *stageName, stageList(f))}
		}
		if st.Host != "" {
			host = st.Host
		}
		if p := strings.TrimSuffix(st.Prefix, "/"); p != "" && !strings.HasPrefix(target, p+"/") && target != p {
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
	for _, h := range reqHeaders {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}

	p := func(format string, a ...any) { fmt.Fprint(stdout, g.Mask(fmt.Sprintf(format, a...))) }
	info, ok := g.Match(req)
	if !ok {
		p("no route matches %s %s", method, target)
		if hostGiven {
			p(" on host %s", host)
		}
		p("\n")
		if len(f.Config.Stages) > 0 && *stageName == "" {
			p("the config has stages (%s): add --stage NAME, or write the stage's prefix or host yourself\n", stageList(f))
		}
		return errReported
	}
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
	if c := g.Cost(req, []byte(*body)); c.Priced {
		switch {
		case c.Refused != "":
			p("cost:     refused before the upstream: %s\n", c.Refused)
		case c.Model != "":
			p("cost:     reserves %s before the call: model %s, ~%d input tokens (estimated) at %s/M + at most %d output tokens at %s/M; settled to the usage the answer reports\n",
				c.Reserve, c.Model, c.InputTokens, c.PerMillionIn, c.OutputTokens, c.PerMillionOut)
		default:
			p("cost:     %s per upstream call (price)\n", c.PerCall)
		}
	}

	w := httptest.NewRecorder()
	g.ServeHTTP(w, req)
	res := w.Result()

	if origin := req.Header.Get("Origin"); origin != "" {
		switch {
		case res.Header.Get("Access-Control-Allow-Origin") != "":
			p("cors:     origin %s is allowed (cors.allow_origins); the gateway answers CORS itself\n", origin)
		case res.StatusCode == http.StatusForbidden:
			p("cors:     origin %s is not allowed: add it to cors.allow_origins (the gateway answers 403 and does not call the upstream)\n", origin)
		}
	}
	if out := rec.req; out != nil {
		p("upstream: %s %s\n", out.Method, out.URL.String())
		for _, name := range sortedHeaderNames(out.Header) {
			for _, v := range out.Header[name] {
				p("  %s: %s\n", name, v)
			}
		}
		var dropped []string
		for _, name := range sortedHeaderNames(req.Header) {
			if why := dropReason(info, name); why != "" {
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
		if rec.err != nil {
			// What the console's test pane shows: why the call failed,
			// with secret values masked.
			p("failed:   %v\n", rec.err)
		}
	}
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

// dropReason says why a client header does not reach the upstream. The
// CORS headers are the gateway's to answer, not headers to allow.
func dropReason(info gateway.RouteInfo, name string) string {
	switch http.CanonicalHeaderKey(name) {
	case "Origin":
		return "CORS: the gateway answers it (cors.allow_origins); never forwarded"
	case "Access-Control-Request-Method", "Access-Control-Request-Headers":
		return "CORS preflight: the gateway answers it; never forwarded"
	}
	return info.DropReason(name)
}

// stageList names f's stages with what selects each.
func stageList(f *config.File) string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(f.Config.Stages)) {
		st := f.Config.Stages[name]
		var by []string
		if st.Prefix != "" {
			by = append(by, "prefix "+st.Prefix)
		}
		if st.Host != "" {
			by = append(by, "host "+st.Host)
		}
		out = append(out, name+": "+strings.Join(by, ", "))
	}
	return strings.Join(out, "; ")
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
	err  error // why sending failed
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
		res, err := t.next.RoundTrip(r)
		t.err = err
		return res, err
	}
	return &http.Response{StatusCode: http.StatusNoContent, Status: "204 No Content (not sent)",
		Header: http.Header{}, Body: http.NoBody, Request: r, ProtoMajor: 1, ProtoMinor: 1}, nil
}
