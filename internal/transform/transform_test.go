package transform

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
)

const canary = "sk_live_CANARY_5f3a9c"

func mustCompile(t testing.TB, cfg config.Transform) *Transform {
	t.Helper()
	tr, err := Compile(cfg)
	if err != nil {
		t.Fatalf("Compile(%+v): %v", cfg, err)
	}
	return tr
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.Transform
		want Errors
	}{
		{
			name: "syntax error carries offset",
			cfg:  config.Transform{Request: "{to: .email,, }"},
			want: Errors{{Path: "request", Offset: 13, Msg: `syntax error at ","`}},
		},
		{
			name: "unterminated expression",
			cfg:  config.Transform{Response: "{a: (.b"},
			want: Errors{{Path: "response", Offset: 7, Msg: "syntax error: unexpected end of expression"}},
		},
		{
			name: "response may not read secrets",
			cfg:  config.Transform{Response: `{sent: true, key: $secret.mailer}`},
			want: Errors{{Path: "response", Offset: -1, Msg: "a response transform cannot read $secret: its output is sent to the client"}},
		},
		{
			name: "response may not read secrets in object shorthand",
			cfg:  config.Transform{Response: `{$secret}`},
			want: Errors{{Path: "response", Offset: -1, Msg: "a response transform cannot read $secret: its output is sent to the client"}},
		},
		{
			name: "dynamic secret read",
			cfg:  config.Transform{Request: `$secret[.name]`},
			want: Errors{{Path: "request", Offset: -1, Msg: "read secrets one at a time as $secret.NAME, so the config can be checked for unknown secrets"}},
		},
		{
			name: "whole secret object",
			cfg:  config.Transform{Request: `$secret | keys`},
			want: Errors{{Path: "request", Offset: -1, Msg: "read secrets one at a time as $secret.NAME, so the config can be checked for unknown secrets"}},
		},
		{
			name: "binding secret",
			cfg:  config.Transform{Request: `.k as $secret | $secret.x`},
			want: Errors{{Path: "request", Offset: -1, Msg: "$secret is reserved for secrets and cannot be bound"}},
		},
		{
			name: "reserved guard names",
			cfg:  config.Transform{Request: `__kw_o_tojson`},
			want: Errors{{Path: "request", Offset: -1, Msg: "the name __kw_o_tojson is reserved"}},
		},
		{
			name: "unknown function",
			cfg:  config.Transform{Request: `frobnicate`},
			want: Errors{{Path: "request", Offset: -1, Msg: "function not defined: frobnicate/0"}},
		},
		{
			name: "unknown variable",
			cfg:  config.Transform{Response: `$nope`},
			want: Errors{{Path: "response", Offset: -1, Msg: "variable not defined: $nope"}},
		},
		{
			name: "imports",
			cfg:  config.Transform{Request: `import "x" as x; .`},
			want: Errors{{Path: "request", Offset: -1, Msg: "modules and imports are not supported"}},
		},
		{
			name: "options and both expressions together",
			cfg:  config.Transform{Request: "(", Response: "$secret.a", Method: "post", ContentType: "json", NonJSON: "drop", Timeout: -1, MaxBytes: -1},
			want: Errors{
				{Path: "non_json", Offset: -1, Msg: `unknown value "drop": want pass or reject`},
				{Path: "timeout", Offset: -1, Msg: "must be positive, got -1ns"},
				{Path: "max_bytes", Offset: -1, Msg: "must be positive, got -1"},
				{Path: "method", Offset: -1, Msg: `"post" is not an HTTP method token`},
				{Path: "content_type", Offset: -1, Msg: `invalid media type "json"`},
				{Path: "request", Offset: 1, Msg: "syntax error: unexpected end of expression"},
				{Path: "response", Offset: -1, Msg: "a response transform cannot read $secret: its output is sent to the client"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := Compile(tt.cfg)
			if tr != nil {
				t.Error("Compile returned a transform with errors")
			}
			var got Errors
			if !errors.As(err, &got) {
				t.Fatalf("Compile error = %v, want Errors", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompileDefaults(t *testing.T) {
	tr := mustCompile(t, config.Transform{Request: `{api_key: $secret.mailer, again: $secret["mailer"], other: $secret.other}`, Method: "POST"})
	if diff := cmp.Diff([]string{"mailer", "other"}, tr.Request.SecretNames()); diff != "" {
		t.Errorf("SecretNames mismatch (-want +got):\n%s", diff)
	}
	if tr.ContentType != "application/json" || tr.Method != "POST" || tr.Response != nil {
		t.Errorf("Compile = %+v, want JSON content type, POST, no response program", tr)
	}
}

func TestRun(t *testing.T) {
	vars := Vars{
		Params:  map[string]string{"owner": "keyward"},
		Query:   url.Values{"page": {"2", "3"}},
		Stage:   map[string]string{"env": "dev"},
		Secrets: map[string]string{"mailer": canary, "unused": "never-read"},
	}
	tests := []struct {
		name   string
		cfg    config.Transform
		side   Side
		body   string
		ctype  string
		want   string
		passed bool
	}{
		{
			name: "contact form gets the key in its body",
			cfg:  config.Transform{Request: `{to: "team@example.com", from: .email, text: .message, api_key: $secret.mailer}`},
			body: `{"email":"a@example.com","message":"hi <there> & you"}`, ctype: "application/json",
			want: `{"api_key":"` + canary + `","from":"a@example.com","text":"hi <there> & you","to":"team@example.com"}`,
		},
		{
			name: "params, query and stage",
			cfg:  config.Transform{Request: `{owner: $params.owner, page: ($query.page | tonumber), env: $stage.env}`},
			body: "", want: `{"env":"dev","owner":"keyward","page":2}`,
		},
		{
			name: "response example from the product brief",
			cfg:  config.Transform{Response: `{sent: (.status == "queued")}`}, side: Response,
			body: `{"status":"queued","id":"m_1"}`, ctype: "application/json; charset=utf-8",
			want: `{"sent":true}`,
		},
		{
			name: "github list trimmed",
			cfg:  config.Transform{Response: `[.[] | {name, url: .html_url, stars: .stargazers_count}]`}, side: Response,
			body: `[{"name":"a","html_url":"https://x/a","stargazers_count":3,"private":false}]`, ctype: "application/json",
			want: `[{"name":"a","stars":3,"url":"https://x/a"}]`,
		},
		{
			name: "big integers keep their digits",
			cfg:  config.Transform{Response: `{id: .id, next: (.n + 1)}`}, side: Response,
			body: `{"id":12345678901234567890,"n":41}`, ctype: "application/problem+json",
			want: `{"id":12345678901234567890,"next":42}`,
		},
		{
			name: "guarded operators keep their meaning",
			cfg:  config.Transform{Response: `{s: ("ab" * 2), n: (3 * 4), m: ({a: {b: 1}} * {a: {c: 2}}), l: ([1] + [2]), t: (.x + "!"), u: (.c += 1 | .c), v: "\(.x)-\([1,2] | join(","))", w: ([3,1,2] | sort)}`}, side: Response,
			body: `{"x":"hey","c":1}`, ctype: "application/json",
			want: `{"l":[1,2],"m":{"a":{"b":1,"c":2}},"n":12,"s":"abab","t":"hey!","u":2,"v":"hey-1,2","w":[1,2,3]}`,
		},
		{
			name: "guarded operators keep jq's output order",
			cfg:  config.Transform{Response: `[(1,2) + (10,20)]`}, side: Response,
			body: `{}`, ctype: "application/json", want: `[11,12,21,22]`,
		},
		{
			name: "env is empty",
			cfg:  config.Transform{Response: `[$ENV, env]`}, side: Response,
			body: `{}`, ctype: "application/json", want: `[{},{}]`,
		},
		{
			name: "non-JSON passes through when the route says pass",
			cfg:  config.Transform{Response: `.a`, NonJSON: "pass"}, side: Response,
			body: `<html>`, ctype: "text/html", want: `<html>`, passed: true,
		},
		{
			name: "JSON type with a broken body passes through when the route says pass",
			cfg:  config.Transform{Response: `.a`, NonJSON: "pass"}, side: Response,
			body: `{"a":`, ctype: "application/json", want: `{"a":`, passed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustCompile(t, tt.cfg)
			p := tr.Request
			if tt.side == Response {
				p = tr.Response
			}
			got, err := p.Run(context.Background(), []byte(tt.body), tt.ctype, vars)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if diff := cmp.Diff(tt.want, string(got.Body)); diff != "" {
				t.Errorf("body mismatch (-want +got):\n%s", diff)
			}
			if got.Passed != tt.passed {
				t.Errorf("Passed = %v, want %v", got.Passed, tt.passed)
			}
		})
	}
}

// TestRunErrors checks the failures that are not bounds: the typed error,
// its status, and that neither message carries the secret.
func TestRunErrors(t *testing.T) {
	secrets := map[string]string{"mailer": canary}
	tests := []struct {
		name       string
		cfg        config.Transform
		side       Side
		body       string
		ctype      string
		wantKind   error
		wantCode   string
		wantStatus int
		wantDetail string
	}{
		{
			name: "request rejects non-JSON with 415",
			cfg:  config.Transform{Request: `.`, NonJSON: "reject"}, body: "a=b", ctype: "application/x-www-form-urlencoded",
			wantKind: ErrNotJSON, wantCode: CodeMediaType, wantStatus: http.StatusUnsupportedMediaType,
			wantDetail: `request transform: body is not JSON (Content-Type "application/x-www-form-urlencoded")`,
		},
		{
			name: "request rejects non-JSON by default",
			cfg:  config.Transform{Request: `.`}, body: "model=gpt-4o", ctype: "text/plain",
			wantKind: ErrNotJSON, wantCode: CodeMediaType, wantStatus: http.StatusUnsupportedMediaType,
			wantDetail: `request transform: body is not JSON (Content-Type "text/plain")`,
		},
		{
			name: "request without a Content-Type is rejected by default",
			cfg:  config.Transform{Request: `.`}, body: `{"model":"gpt-4o"}`, ctype: "",
			wantKind: ErrNotJSON, wantCode: CodeMediaType, wantStatus: http.StatusUnsupportedMediaType,
			wantDetail: `request transform: body is not JSON (Content-Type "")`,
		},
		{
			name: "request with a BOM is invalid JSON",
			cfg:  config.Transform{Request: `.`}, body: "\ufeff{\"model\":\"gpt-4o\"}", ctype: "application/json",
			wantKind: ErrInvalidJSON, wantCode: CodeInvalidJSON, wantStatus: http.StatusBadRequest,
			wantDetail: `request transform: body does not parse as one JSON value`,
		},
		{
			name: "request with a trailing comma is invalid JSON",
			cfg:  config.Transform{Request: `.`}, body: `{"model":"gpt-4o",}`, ctype: "application/json; charset=utf-8",
			wantKind: ErrInvalidJSON, wantCode: CodeInvalidJSON, wantStatus: http.StatusBadRequest,
			wantDetail: `request transform: body does not parse as one JSON value`,
		},
		{
			name: "response rejects non-JSON with 502",
			cfg:  config.Transform{Response: `.`, NonJSON: "reject"}, side: Response, body: "<html>", ctype: "text/html",
			wantKind: ErrNotJSON, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: `response transform: body is not JSON (Content-Type "text/html")`,
		},
		{
			name: "error() quoting the secret is scrubbed",
			cfg:  config.Transform{Request: `error("key is " + $secret.mailer)`}, body: `{}`, ctype: "application/json",
			wantKind: ErrRuntime, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: `request transform: error: "key is [REDACTED]"`,
		},
		{
			name: "type error previewing an object with the secret is scrubbed",
			cfg:  config.Transform{Request: `{k: $secret.mailer} | .k | keys`}, body: `{}`, ctype: "application/json",
			wantKind: ErrRuntime, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: `request transform: keys cannot be applied to: string ("[REDACTED]")`,
		},
		{
			name: "error() with an object value is previewed",
			cfg:  config.Transform{Request: `error({key: $secret.mailer, pad: "xxxxxxxxxxxxxxxxxxxx"})`}, body: `{}`, ctype: "application/json",
			wantKind: ErrRuntime, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: `request transform: error: {"key":"[REDACTED] ...}`,
		},
		{
			name: "no output",
			cfg:  config.Transform{Response: `empty`}, side: Response, body: `{}`, ctype: "application/json",
			wantKind: ErrRuntime, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: "response transform: expression produced no value",
		},
		{
			name: "several outputs",
			cfg:  config.Transform{Response: `.[]`}, side: Response, body: `[1,2]`, ctype: "application/json",
			wantKind: ErrRuntime, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: "response transform: expression produced more than one value",
		},
		{
			name: "missing secret",
			cfg:  config.Transform{Request: `$secret.other`}, body: `{}`, ctype: "application/json",
			wantKind: ErrRuntime, wantCode: CodeFailed, wantStatus: http.StatusBadGateway,
			wantDetail: `request transform: secret "other" was not provided`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustCompile(t, tt.cfg)
			p := tr.Request
			if tt.side == Response {
				p = tr.Response
			}
			_, err := p.Run(context.Background(), []byte(tt.body), tt.ctype, Vars{Secrets: secrets})
			var re *RunError
			if !errors.As(err, &re) {
				t.Fatalf("Run error = %v, want *RunError", err)
			}
			if !errors.Is(err, tt.wantKind) || re.Code != tt.wantCode || re.Status != tt.wantStatus {
				t.Errorf("Run error = %+v, want kind %v, code %s, status %d", re, tt.wantKind, tt.wantCode, tt.wantStatus)
			}
			if diff := cmp.Diff(tt.wantDetail, re.Error()); diff != "" {
				t.Errorf("log detail mismatch (-want +got):\n%s", diff)
			}
			assertNoSecret(t, re)
		})
	}
}

func assertNoSecret(t *testing.T, re *RunError) {
	t.Helper()
	for _, s := range []string{re.Message, re.Detail, re.Error()} {
		if strings.Contains(s, canary[:4]) {
			t.Errorf("message %q contains (a prefix of) the secret", s)
		}
	}
}

// TestBounds runs expressions that loop forever or build huge values, and
// checks each is stopped quickly by the deadline or the size guard, and that
// the program serves a normal request afterwards.
func TestBounds(t *testing.T) {
	healthy := mustCompile(t, config.Transform{Response: `{ok: .ok}`})
	tests := []struct {
		name string
		expr string
		body string
		want error
	}{
		{name: "tail recursion", expr: `def f: f; f`, want: ErrTimeout},
		{name: "deep recursion", expr: `def f: [f]; f`, want: ErrTimeout},
		{name: "repeat", expr: `[repeat(1)]`, want: ErrTimeout},
		{name: "range collected", expr: `[range(1e9)]`, want: ErrTimeout},
		{name: "range reduced", expr: `reduce range(1e12) as $i (0; . + $i)`, want: ErrTimeout},
		{name: "until never", expr: `0 | until(false; . + 1)`, want: ErrTimeout},
		{name: "string repetition", expr: `"x" * 1e9`, want: ErrTooLarge},
		{name: "string repetition reversed", expr: `1e9 * "abc"`, want: ErrTooLarge},
		{name: "update repetition", expr: `{a: "xy"} | .a *= 1e9`, want: ErrTooLarge},
		{name: "string doubling", expr: `reduce range(64) as $i ("x"; . + .)`, want: ErrTooLarge},
		{name: "array doubling", expr: `reduce range(64) as $i ([1]; . + .)`, want: ErrTooLarge},
		{name: "update doubling", expr: `reduce range(64) as $i ({s: "ab"}; .s += .s) | 1`, want: ErrTooLarge},
		{name: "big array index", expr: `null | .[1e9] = 1`, want: ErrTooLarge},
		{name: "big array index in path", expr: `{a: []} | .a[.n // 5e8] |= 1`, want: ErrTooLarge},
		{name: "setpath", expr: `setpath([5e8]; 1)`, want: ErrTooLarge},
		{name: "shared structure to JSON", expr: `reduce range(60) as $i (1; [., .]) | tojson`, want: ErrTooLarge},
		{name: "shared structure interpolated", expr: `reduce range(60) as $i (1; [., .]) | "\(.)"`, want: ErrTooLarge},
		{name: "shared structure flattened", expr: `reduce range(60) as $i (1; [., .]) | flatten | length`, want: ErrTooLarge},
		{name: "shared strings joined", expr: `("x" * 1000) as $s | reduce range(40) as $i ([$s]; . + .) | join("")`, want: ErrTooLarge},
		{name: "shared structure output", expr: `reduce range(60) as $i (1; [., .])`, want: ErrTooLarge},
		{name: "shared structure sorted", expr: `reduce range(60) as $i (1; [., .]) | sort | length`, want: ErrTooLarge},
		{name: "huge input", expr: `.`, body: `"` + strings.Repeat("x", 2<<20) + `"`, want: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A size guard must stop its case on its own, long before a
			// deadline would; loops get a short deadline.
			timeout := 50 * time.Millisecond
			if tt.want == ErrTooLarge {
				timeout = time.Minute
			}
			tr := mustCompile(t, config.Transform{Response: tt.expr, Timeout: timeout})
			body := tt.body
			if body == "" {
				body = "{}"
			}
			start := time.Now()
			_, err := tr.Response.Run(context.Background(), []byte(body), "application/json", Vars{})
			var re *RunError
			if !errors.As(err, &re) || !errors.Is(err, tt.want) {
				t.Fatalf("Run error = %v, want %v", err, tt.want)
			}
			if re.Code != CodeFailed || re.Status != http.StatusBadGateway {
				t.Errorf("Run error = %+v, want %s and 502", re, CodeFailed)
			}
			// Generous: the deadline is 50ms; a guard that let a step
			// allocate gigabytes would take seconds.
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("stopped after %s", d)
			}
			got, err := healthy.Response.Run(context.Background(), []byte(`{"ok":1}`), "application/json", Vars{})
			if err != nil || string(got.Body) != `{"ok":1}` {
				t.Errorf("a later run = %s, %v; want {\"ok\":1}", got.Body, err)
			}
		})
	}
}

// TestBoundsTryCannotEscape checks that catching a guard error does not get
// the value built anyway, and that the deadline cannot be caught.
func TestBoundsTryCannotEscape(t *testing.T) {
	tests := []struct {
		name string
		expr string
		want string
		kind error
	}{
		{name: "caught guard yields the fallback", expr: `try ("x" * 1e9) catch "refused"`, want: `"refused"`},
		{name: "deadline is not catchable", expr: `try (def f: f; f) catch "caught"`, kind: ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustCompile(t, config.Transform{Response: tt.expr, Timeout: 50 * time.Millisecond})
			got, err := tr.Response.Run(context.Background(), nil, "", Vars{})
			if tt.kind != nil {
				if !errors.Is(err, tt.kind) {
					t.Fatalf("Run error = %v, want %v", err, tt.kind)
				}
				return
			}
			if err != nil || string(got.Body) != tt.want {
				t.Errorf("Run = %s, %v; want %s", got.Body, err, tt.want)
			}
		})
	}
}

func TestSmallSizeBound(t *testing.T) {
	tests := []struct {
		name string
		expr string
		body string
		want error
	}{
		{name: "output over bound", expr: `[range(100)]`, body: `{}`, want: ErrTooLarge},
		{name: "input over bound", expr: `.`, body: fmt.Sprintf(`[%s1]`, strings.Repeat("1,", 100)), want: ErrTooLarge},
		{name: "within bound", expr: `[range(10)]`, body: `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustCompile(t, config.Transform{Response: tt.expr, MaxBytes: 100})
			_, err := tr.Response.Run(context.Background(), []byte(tt.body), "application/json", Vars{})
			if !errors.Is(err, tt.want) {
				t.Errorf("Run error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestScrub(t *testing.T) {
	tests := []struct {
		name    string
		msg     string
		secrets map[string]string
		want    string
	}{
		{name: "whole", msg: "a sk_live_1234 b", secrets: map[string]string{"k": "sk_live_1234"}, want: "a [REDACTED] b"},
		{name: "truncated preview", msg: `cannot add: "sk_live_12...`, secrets: map[string]string{"k": "sk_live_1234"}, want: `cannot add: "[REDACTED]...`},
		{name: "json escaped", msg: `error: "a\"b\\c"`, secrets: map[string]string{"k": `a"b\c`}, want: `error: "[REDACTED]"`},
		{name: "short secret", msg: "x=ab", secrets: map[string]string{"k": "ab"}, want: "x=[REDACTED]"},
		{name: "unrelated", msg: "nothing here", secrets: map[string]string{"k": "sk_live_1234"}, want: "nothing here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := scrub(tt.msg, tt.secrets); got != tt.want {
				t.Errorf("scrub(%q) = %q, want %q", tt.msg, got, tt.want)
			}
		})
	}
}

func TestConcurrentRuns(t *testing.T) {
	tr := mustCompile(t, config.Transform{Request: `{n: .n, k: $secret.k}`})
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			body := fmt.Appendf(nil, `{"n":%d}`, i)
			got, err := tr.Request.Run(context.Background(), body, "application/json", Vars{Secrets: map[string]string{"k": "v"}})
			if err == nil && string(got.Body) != fmt.Sprintf(`{"k":"v","n":%d}`, i) {
				err = fmt.Errorf("got %s", got.Body)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
