package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/keyward/keyward/internal/abort"
	"github.com/keyward/keyward/internal/accesslog"
	"github.com/keyward/keyward/internal/proxy"
	"github.com/keyward/keyward/internal/transform"
	"github.com/keyward/keyward/internal/validate"
)

// refusal is an answer the gateway gives instead of the upstream's. What
// the client sees (status, code, message, violations) is kept apart from
// what is logged (cause), because a cause can hold upstream URLs, error
// texts and so secrets.
type refusal struct {
	status     int
	code, msg  string
	violations []validate.Violation
	// cause, when set, is logged (scrubbed) at level with logMsg.
	cause  error
	logMsg string
	level  slog.Level
}

func (e *refusal) Error() string { return e.code + ": " + e.msg }

// refused returns the refusal of a request with a stable code and a
// message for people. The message never quotes secrets.
func refused(status int, code, msg string) *refusal {
	return &refusal{status: status, code: code, msg: msg}
}

// refuse answers a failed request: the one place that turns an error into
// what the client sees, what is logged and what is counted. A failure after
// the response's head was sent cannot be answered: the connection is cut
// (panic with http.ErrAbortHandler, where the server supports it), so the
// client sees a broken response rather than a cleanly truncated one.
func (g *Gateway) refuse(w http.ResponseWriter, x *exchange, err error) {
	var pe *proxy.Error
	if errors.As(err, &pe) {
		g.refuseUpstream(w, x, pe)
		return
	}
	var ca *cappedAnswer
	if errors.As(err, &ca) {
		x.errCode = ca.code
		h := w.Header()
		h["Content-Type"] = ca.r.ctype
		h["Cache-Control"] = noStore
		h["Content-Length"] = []string{strconv.Itoa(len(ca.r.body))}
		x.status = ca.r.status
		w.WriteHeader(ca.r.status)
		_, _ = w.Write(ca.r.body)
		return
	}
	var rf *refusal
	if !errors.As(err, &rf) {
		rf = &refusal{status: http.StatusInternalServerError, code: "internal_error", msg: "internal error",
			cause: err, logMsg: "internal error", level: slog.LevelError}
	}
	if rf.cause != nil {
		route := ""
		if x.ep != nil {
			route = x.ep.name
		}
		g.opts.Logger.LogAttrs(x.ctx(), rf.level, rf.logMsg, slogString("id", x.id[0]), slogString("route", route),
			slogString("error", g.scrub.String(rf.cause.Error())))
	}
	g.write(w, x, rf.status, rf.code, rf.msg, rf.violations)
}

// refuseUpstream answers a failed upstream exchange. The error text may
// hold the upstream URL, query secrets included, so it is scrubbed before
// it is logged and never sent to the client.
func (g *Gateway) refuseUpstream(w http.ResponseWriter, x *exchange, e *proxy.Error) {
	var re *transform.RunError
	if e.Kind == proxy.Hook && errors.As(e.Err, &re) {
		g.refuse(w, x, transformRefusal(re))
		return
	}
	var status int
	var code, msg string
	switch e.Kind {
	case proxy.ClientBody:
		status, code, msg = clientBodyRefusal(e.Err)
	case proxy.Encoding:
		status, code, msg = http.StatusBadGateway, "upstream_encoding", "the upstream response uses an encoding keyward cannot inspect"
	case proxy.Timeout:
		status, code, msg = http.StatusGatewayTimeout, "upstream_timeout", "the upstream did not answer in time"
	case proxy.Stalled:
		status, code, msg = http.StatusGatewayTimeout, "upstream_stalled", "the upstream stopped sending its response"
	case proxy.Denied:
		status, code, msg = http.StatusBadGateway, "upstream_address_denied", "the upstream address is not allowed by the outbound policy"
	case proxy.ClientGone:
		// The client went away; nobody reads an answer. 499 is nginx's
		// code for this, and operators know it.
		x.status, x.errCode = 499, "client_closed_request"
	case proxy.Shutdown:
		// A routine stop ran out of drain time: not an upstream fault.
		status, code, msg = http.StatusServiceUnavailable, "shutdown", "the gateway is shutting down; retry"
	default:
		status, code, msg = http.StatusBadGateway, "upstream_unavailable", "the upstream could not be reached"
	}
	if e.Kind != proxy.ClientGone && e.Kind != proxy.ClientBody && e.Kind != proxy.Shutdown {
		// The path can hold a secret (some APIs put the key there), so the
		// logged target is scrubbed like the error text.
		target := x.ep.upstream.Scheme + "://" + x.ep.upstream.Host + x.path
		g.opts.Logger.LogAttrs(x.ctx(), slog.LevelError, "upstream error", slogString("id", x.id[0]), slogString("route", x.ep.name),
			slogString("upstream", g.scrub.String(target)), slogString("error", g.scrub.String(e.Err.Error())))
		if m := g.opts.Metrics; m != nil {
			m.UpstreamError(x.ep.name, code)
		}
	}
	if e.Committed {
		// The head is out: the client can only see the response cut. The
		// access log says what happened, never the upstream's 200.
		if e.Kind != proxy.ClientGone {
			x.status, x.errCode = status, code
		}
		if abortable(x.in) {
			panic(http.ErrAbortHandler)
		}
		return
	}
	if e.Kind == proxy.ClientGone {
		if abortable(x.in) {
			// Nothing was written. A client that only half-closed is still
			// reading: ending the handler would send it an empty 200, so
			// the connection is aborted instead.
			panic(http.ErrAbortHandler)
		}
		return
	}
	g.write(w, x, status, code, msg, nil)
}

// clientBodyRefusal answers a request whose body could not be read: the
// client's fault, never counted as an upstream error.
func clientBodyRefusal(err error) (status int, code, msg string) {
	var maxErr *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &maxErr):
		return http.StatusRequestEntityTooLarge, "body_too_large", "request body exceeds " + strconv.FormatInt(maxErr.Limit, 10) + " bytes"
	case errors.As(err, &ne) && ne.Timeout():
		return http.StatusRequestTimeout, "body_timeout", "the request body was not sent in time"
	}
	return http.StatusBadRequest, "bad_request", "the request body is malformed"
}

// abortable reports whether the server serving r can cut a response short
// when the handler panics with http.ErrAbortHandler.
func abortable(r *http.Request) bool {
	return r != nil && abort.Supported(r.Context())
}

// write writes the JSON error every refusal uses:
// {"error":{"code":"...","message":"..."}}. Codes are stable; messages are
// for people. CORS headers set earlier stay, so a page can read the error.
// Violations list every validation problem, so a front end can show each
// message next to its field.
func (g *Gateway) write(w http.ResponseWriter, x *exchange, status int, code, msg string, vs []validate.Violation) {
	x.status, x.errCode = status, code
	body, _ := json.Marshal(errorBody{Error: errorDetail{Code: code, Message: msg, Violations: vs}})
	h := w.Header()
	h["Content-Type"] = jsonType
	h["X-Content-Type-Options"] = nosniff
	h["Cache-Control"] = noStore
	h["Content-Length"] = []string{strconv.Itoa(len(body) + 1)}
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code       string               `json:"code"`
	Message    string               `json:"message"`
	Violations []validate.Violation `json:"violations,omitempty"`
}

var (
	jsonType = []string{"application/json"}
	nosniff  = []string{"nosniff"}
	noStore  = []string{"no-store"}
)

// recorder notes the status and size of a response for the access log.
// It unwraps, so http.ResponseController can flush streams through it.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Flush lets streaming work through wrappers that don't know about
// ResponseController.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// requestID accepts a client's X-Request-Id if it is short and plain (so
// it is safe in logs), or makes a new one.
func requestID(r *http.Request) string {
	if v := r.Header.Get("X-Request-Id"); v != "" && len(v) <= 64 && plainID(v) {
		return v
	}
	var b [8]byte
	var s [16]byte
	_, _ = rand.Read(b[:])
	hex.Encode(s[:], b[:])
	return string(s[:])
}

func plainID(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// finish writes the access-log line and metrics. The path is logged
// without its query: query values can be personal or secret.
func (g *Gateway) finish(w *recorder, r *http.Request, x *exchange) {
	status := x.status
	if status == 0 {
		status = w.status
	}
	dur := g.opts.Now().Sub(x.start)
	routeName, stageName := "", ""
	if x.ep != nil {
		routeName, stageName = x.ep.name, x.ep.stage
	}
	if m := g.opts.Metrics; m != nil {
		m.Request(routeName, r.Method, status, dur, x.Duration)
	}
	if !g.settings.AccessLog || g.opts.AccessLog == nil {
		return
	}
	g.opts.AccessLog.Log(&accesslog.Entry{
		Time: x.start, ID: x.id[0], Stage: stageName, Route: routeName, Method: r.Method,
		Path: g.scrub.String(r.URL.EscapedPath()), Status: status, Bytes: w.bytes,
		Duration: dur, UpstreamDuration: x.Duration, Error: x.errCode,
		Caller: x.caller.Kind, CallerID: callerHash(&x.caller), DroppedQuery: x.droppedQuery,
		Model: x.spend.model(), TokensIn: x.spend.tokensIn(), TokensOut: x.spend.tokensOut(),
		Cost: int64(x.spend.charged.Money), Charged: x.spend.settled,
	})
}

func slogString(k, v string) slog.Attr { return slog.String(k, v) }

// ctx is the context for log records of this request: the exchange while
// forwarding, else a background context.
func (x *exchange) ctx() context.Context {
	if x.Context != nil {
		return x
	}
	return context.Background()
}

// UpstreamUnavailable writes the JSON 502 upstream_unavailable: for the
// cache, when it answers requests that waited on an upstream call that
// broke off without an answer (CORS headers are already on w).
func UpstreamUnavailable(w http.ResponseWriter, _ *http.Request) {
	body, _ := json.Marshal(errorBody{Error: errorDetail{Code: "upstream_unavailable", Message: "the upstream could not be reached"}})
	h := w.Header()
	h["Content-Type"] = jsonType
	h["X-Content-Type-Options"] = nosniff
	h["Cache-Control"] = noStore
	h["Content-Length"] = []string{strconv.Itoa(len(body) + 1)}
	w.WriteHeader(http.StatusBadGateway)
	_, _ = w.Write(append(body, '\n'))
}
