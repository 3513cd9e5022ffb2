// Package transform reshapes JSON bodies on their way through the gateway
// with jq expressions (github.com/itchyny/gojq): the client's body into the
// upstream's (which may carry a secret, e.g. an API key the upstream wants in
// the JSON), and the upstream's answer into the client's (which never can).
//
// Expressions are compiled once by [Compile]; each evaluation runs under a
// deadline and a size bound (see guard.go for how a single gojq step is kept
// from allocating gigabytes), and fails with a [*RunError] whose client message
// is generic and whose log detail has every secret value scrubbed.
package transform

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/itchyny/gojq"

	"github.com/keyward/keyward/internal/config"
)

// Side says which way a Program maps bodies.
type Side int

const (
	// Request maps the client's body to the upstream's; it may read secrets.
	Request Side = iota
	// Response maps the upstream's body to the client's; it may not.
	Response
)

// String returns "request" or "response", as in config paths and logs.
func (s Side) String() string {
	if s == Request {
		return "request"
	}
	return "response"
}

// Transform is a compiled [config.Transform]. A nil *Transform, and nil Programs within
// it, mean "no transform", so the gateway needs no special case.
type Transform struct {
	// Request maps the client body; nil when the block's request is empty.
	Request *Program
	// Response maps the upstream body; nil when the block's response is empty.
	Response *Program
	// Method is the upstream method, or "" to keep the client's.
	Method string
	// ContentType is the upstream Content-Type, or "" to keep the client's.
	ContentType string
}

// Compile compiles both expressions of a route's transform block and checks
// its options, reporting every problem at once as Errors with paths relative
// to the block. A response expression that reads $secret is an error here,
// not at run time.
func Compile(cfg config.Transform) (*Transform, error) {
	var errs Errors
	t := &Transform{Method: cfg.Method, ContentType: cfg.ContentType}
	opts := options{timeout: cfg.Timeout, limit: cfg.MaxBytes}
	// A body keyward cannot parse is refused unless the route says
	// otherwise: passed through untouched, it would reach the upstream
	// with the credential added and without the transform's rules (a
	// forced cheap model, a max_tokens cap). A UTF-8 BOM, text/plain, a
	// missing Content-Type or a trailing comma all bypassed a request
	// transform when "pass" was the default.
	switch cfg.NonJSON {
	case "", "reject":
		opts.rejectNonJSON = true
	case "pass":
	default:
		errs.add("non_json", -1, "unknown value %q: want pass or reject", cfg.NonJSON)
	}
	if opts.timeout == 0 {
		opts.timeout = DefaultTimeout
	} else if opts.timeout < 0 {
		errs.add("timeout", -1, "must be positive, got %s", cfg.Timeout)
	}
	if opts.limit == 0 {
		opts.limit = DefaultMaxBytes
	} else if opts.limit < 0 {
		errs.add("max_bytes", -1, "must be positive, got %d", cfg.MaxBytes)
	}
	if cfg.Method != "" && !validMethod(cfg.Method) {
		errs.add("method", -1, "%q is not an HTTP method token", cfg.Method)
	}
	if cfg.ContentType != "" {
		if _, _, err := mime.ParseMediaType(cfg.ContentType); err != nil || !strings.Contains(cfg.ContentType, "/") {
			errs.add("content_type", -1, "invalid media type %q", cfg.ContentType)
		}
	} else if cfg.Request != "" {
		t.ContentType = "application/json"
	}
	if cfg.Request != "" {
		p, err := compileProgram(cfg.Request, Request, opts)
		errs = appendErr(errs, err)
		t.Request = p
	}
	if cfg.Response != "" {
		p, err := compileProgram(cfg.Response, Response, opts)
		errs = appendErr(errs, err)
		t.Response = p
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return t, nil
}

func appendErr(errs Errors, err error) Errors {
	var e *Error
	if errors.As(err, &e) {
		return append(errs, e)
	}
	return errs
}

// validMethod reports whether m is an RFC 9110 token in upper case, the
// only form upstreams reliably accept.
func validMethod(m string) bool {
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

type options struct {
	timeout       time.Duration
	limit         int64
	rejectNonJSON bool
}

// Program is one compiled jq expression with its bounds. It is immutable
// and safe for concurrent use.
type Program struct {
	side    Side
	src     string
	code    *gojq.Code
	secrets []string
	opts    options
}

// Variables, in the order gojq receives their values.
var (
	requestVars  = []string{"$params", "$query", "$stage", "$caller", secretVar}
	responseVars = []string{"$params", "$query", "$stage", "$caller"}
)

// CompileProgram compiles one expression for the given side. Most callers
// want Compile; this exists for `keyward test` and tests.
func CompileProgram(src string, side Side) (*Program, error) {
	return compileProgram(src, side, options{timeout: DefaultTimeout, limit: DefaultMaxBytes})
}

func compileProgram(src string, side Side, opts options) (*Program, error) {
	path := side.String()
	q, err := gojq.Parse(src)
	if err != nil {
		var pe *gojq.ParseError
		if errors.As(err, &pe) {
			msg := "syntax error"
			if pe.Token != "" {
				msg += fmt.Sprintf(" at %q", pe.Token)
			} else {
				msg += ": unexpected end of expression"
			}
			return nil, &Error{Path: path, Offset: pe.Offset, Msg: msg}
		}
		return nil, &Error{Path: path, Offset: -1, Msg: err.Error()}
	}
	secrets, problems := checkSource(q, side == Request)
	if len(problems) > 0 {
		return nil, &Error{Path: path, Offset: -1, Msg: strings.Join(problems, "; ")}
	}
	q.FuncDefs = append(prelude(), q.FuncDefs...)
	vars := requestVars
	if side == Response {
		vars = responseVars
	}
	copts := append(guardFuncs(opts.limit),
		gojq.WithVariables(vars),
		// $ENV and env would otherwise be empty anyway; say so explicitly,
		// because the process environment is where secrets come from.
		gojq.WithEnvironLoader(func() []string { return nil }),
	)
	code, err := gojq.Compile(q, copts...)
	if err != nil {
		return nil, &Error{Path: path, Offset: -1, Msg: err.Error()}
	}
	return &Program{side: side, src: src, code: code, secrets: secrets, opts: opts}, nil
}

// SecretNames returns the secrets the expression reads, in order of first
// use, so the config loader can report unknown ones and the gateway can pass
// only these to Run.
func (p *Program) SecretNames() []string { return append([]string(nil), p.secrets...) }

// String returns the expression as written.
func (p *Program) String() string { return p.src }

// MaxBytes is the largest input Run accepts, so a caller can stop reading
// a body one byte past it instead of buffering all of it.
func (p *Program) MaxBytes() int64 { return p.opts.limit }

// Vars are the values an expression can read besides its input.
type Vars struct {
	// Params are the path parameters, as $params.NAME.
	Params map[string]string
	// Query holds the client query parameters the route allows; $query.NAME
	// is the first value of each.
	Query url.Values
	// Stage holds the stage variables, as $stage.NAME.
	Stage map[string]string
	// Caller is the verified caller, as $caller: {kind, id, claims}; nil
	// (jq's null) on a public route.
	Caller map[string]any
	// Secrets holds raw secret values by name, as $secret.NAME. Only request
	// programs read it, and only the names in SecretNames; a response
	// program ignores it. The values are also scrubbed from error details.
	Secrets map[string]string
}

// Result is the outcome of a successful Run.
type Result struct {
	// Body is the new body, or the input unchanged when Passed is true.
	Body []byte
	// Passed is true when the input was not JSON and the route lets such
	// bodies through untouched.
	Passed bool
}

// Run evaluates the expression on body. contentType is the body's
// Content-Type: JSON is "application/json" or any "+json" type, and an empty
// body is read as null (a GET can still produce an upstream body). The
// expression must produce exactly one value. Failures are *RunError.
func (p *Program) Run(ctx context.Context, body []byte, contentType string, vars Vars) (Result, error) {
	if int64(len(body)) > p.opts.limit {
		return Result{}, p.fail(ErrTooLarge, fmt.Sprintf("input of %d bytes exceeds %d", len(body), p.opts.limit))
	}
	var in any
	if len(body) > 0 {
		v, typed, ok := decodeJSON(body, contentType)
		if !ok {
			switch {
			case !p.opts.rejectNonJSON:
				return Result{Body: body, Passed: true}, nil
			case typed:
				return Result{}, p.fail(ErrInvalidJSON, "body does not parse as one JSON value")
			}
			return Result{}, p.fail(ErrNotJSON, "body is not JSON (Content-Type "+fmt.Sprintf("%q", contentType)+")")
		}
		in = v
	}
	args, err := p.args(vars)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.timeout)
	defer cancel()
	iter := p.code.RunWithContext(ctx, in, args...)
	out, ok := iter.Next()
	if !ok {
		return Result{}, p.fail(ErrRuntime, "expression produced no value")
	}
	if err, isErr := out.(error); isErr {
		return Result{}, p.runError(ctx, err, vars.Secrets)
	}
	if extra, more := iter.Next(); more {
		if err, isErr := extra.(error); isErr {
			return Result{}, p.runError(ctx, err, vars.Secrets)
		}
		return Result{}, p.fail(ErrRuntime, "expression produced more than one value")
	}
	if encodedSize(out, p.opts.limit) > p.opts.limit {
		return Result{}, p.fail(ErrTooLarge, fmt.Sprintf("output exceeds %d bytes", p.opts.limit))
	}
	b, err := gojq.Marshal(out)
	if err != nil {
		return Result{}, p.fail(ErrRuntime, "encoding output: "+scrub(err.Error(), vars.Secrets))
	}
	return Result{Body: b}, nil
}

func (p *Program) args(vars Vars) ([]any, error) {
	query := make(map[string]any, len(vars.Query))
	for k, v := range vars.Query {
		if len(v) > 0 {
			query[k] = v[0]
		}
	}
	var who any
	if vars.Caller != nil {
		who = vars.Caller
	}
	args := []any{stringMap(vars.Params), query, stringMap(vars.Stage), who}
	if p.side == Response {
		return args, nil
	}
	secrets := make(map[string]any, len(p.secrets))
	for _, name := range p.secrets {
		v, ok := vars.Secrets[name]
		if !ok {
			return nil, p.fail(ErrRuntime, fmt.Sprintf("secret %q was not provided", name))
		}
		secrets[name] = v
	}
	return append(args, secrets), nil
}

func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// decodeJSON decodes body when contentType says JSON and body is one JSON
// value; typed reports whether the Content-Type said JSON. Numbers stay
// json.Number so large IDs keep their digits.
func decodeJSON(body []byte, contentType string) (v any, typed, ok bool) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return nil, false, false
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return nil, true, false
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, true, false
	}
	return v, true, true
}

// Failure kinds, for errors.Is on a *RunError.
var (
	// ErrTimeout: the evaluation ran past its deadline.
	ErrTimeout = errors.New("transform timed out")
	// ErrTooLarge: the input, output or an intermediate value was over the
	// size bound.
	ErrTooLarge = errors.New("transform value too large")
	// ErrNotJSON: the body's Content-Type is not JSON (or is missing) and
	// the route rejects such bodies.
	ErrNotJSON = errors.New("body is not JSON")
	// ErrInvalidJSON: the Content-Type says JSON but the body does not
	// parse as one JSON value (a BOM, a trailing comma, trailing data).
	ErrInvalidJSON = errors.New("body is not valid JSON")
	// ErrRuntime: the expression failed (a type error, error(...), no or
	// several outputs).
	ErrRuntime = errors.New("transform failed")
)

// Stable error codes for the gateway's JSON error body.
const (
	// CodeFailed answers any failure of a transform with 502: the gateway
	// could not produce a good exchange with the upstream.
	CodeFailed = "transform_failed"
	// CodeMediaType answers a non-JSON client body on a route that rejects
	// one, with 415.
	CodeMediaType = "unsupported_media_type"
	// CodeInvalidJSON answers a client body that says it is JSON but does
	// not parse, with 400.
	CodeInvalidJSON = "invalid_json"
)

// RunError is a failed evaluation. Message is safe to send to the client;
// Detail is for the log, with every secret value scrubbed. Neither ever
// contains a secret.
type RunError struct {
	// Code is CodeFailed, CodeMediaType or CodeInvalidJSON.
	Code string
	// Status is the HTTP status for the client: 502, or 415 / 400 for a
	// rejected request body that is not JSON / does not parse.
	Status int
	// Side is the side of the failed program.
	Side Side
	// Message is generic: gojq messages quote values, which may be secrets
	// or upstream data the route meant to trim away.
	Message string
	// Detail says what went wrong, for the log.
	Detail string
	// Kind is ErrTimeout, ErrTooLarge, ErrNotJSON, ErrInvalidJSON or
	// ErrRuntime.
	Kind error
}

// Error returns the log-safe description.
func (e *RunError) Error() string { return e.Side.String() + " transform: " + e.Detail }

// Unwrap returns the failure kind, for errors.Is.
func (e *RunError) Unwrap() error { return e.Kind }

func (p *Program) fail(kind error, detail string) *RunError {
	e := &RunError{Code: CodeFailed, Status: http.StatusBadGateway, Side: p.side, Detail: detail, Kind: kind}
	switch {
	case kind == ErrNotJSON && p.side == Request:
		e.Code, e.Status, e.Message = CodeMediaType, http.StatusUnsupportedMediaType, "the request body must be JSON (Content-Type: application/json)"
	case kind == ErrInvalidJSON && p.side == Request:
		e.Code, e.Status, e.Message = CodeInvalidJSON, http.StatusBadRequest, "the request body is not valid JSON"
	case kind == ErrTimeout:
		e.Message = "the " + p.side.String() + " transform took too long"
	case kind == ErrTooLarge:
		e.Message = "the " + p.side.String() + " transform's value is too large"
	default:
		e.Message = "the " + p.side.String() + " transform failed"
	}
	return e
}

// runError classifies an error gojq returned.
func (p *Program) runError(ctx context.Context, err error, secrets map[string]string) *RunError {
	switch {
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return p.fail(ErrTimeout, fmt.Sprintf("stopped after %s", p.opts.timeout))
	case errors.Is(err, context.Canceled):
		return p.fail(ErrTimeout, "canceled")
	case errorsAsTooLarge(err):
		return p.fail(ErrTooLarge, err.Error())
	}
	var msg string
	var ve gojq.ValueError
	if errors.As(err, &ve) {
		// error(v) renders v whole; preview it, bounded, instead.
		msg = "error: " + gojq.Preview(ve.Value())
	} else {
		msg = err.Error()
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return p.fail(ErrRuntime, scrub(msg, secrets))
}

// scrub removes secret values from a log message: whole values, and the
// truncated prefixes gojq's previews leave ("sk_live_ab...").
func scrub(msg string, secrets map[string]string) string {
	for _, s := range secrets {
		forms := []string{s}
		if q, err := json.Marshal(s); err == nil && len(q) > 2 {
			forms = append(forms, string(q[1:len(q)-1]))
		}
		for _, f := range forms {
			msg = scrubPrefixes(msg, f)
		}
	}
	return msg
}

// scrubPrefixes replaces every run of msg that is a prefix of s at least
// minPrefix bytes long (or all of a shorter s).
func scrubPrefixes(msg, s string) string {
	const minPrefix = 4
	if s == "" {
		return msg
	}
	need := min(minPrefix, len(s))
	var b strings.Builder
	for i := 0; i < len(msg); {
		n := 0
		for n < len(s) && i+n < len(msg) && msg[i+n] == s[n] {
			n++
		}
		if n >= need {
			b.WriteString("[REDACTED]")
			i += n
			continue
		}
		b.WriteByte(msg[i])
		i++
	}
	return b.String()
}
