package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/keyward/keyward/internal/accesslog"
	"github.com/keyward/keyward/internal/validate"
)

// fail writes the JSON error every refusal uses:
// {"error":{"code":"...","message":"..."}}. Codes are stable; messages are
// for people. CORS headers set earlier stay, so a page can read the error.
func (g *Gateway) fail(w http.ResponseWriter, x *exchange, status int, code, msg string) {
	g.failWith(w, x, status, code, msg, nil)
}

// failWith is fail with validation violations listed, so a front end can
// show each message next to its field.
func (g *Gateway) failWith(w http.ResponseWriter, x *exchange, status int, code, msg string, vs []validate.Violation) {
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
func (g *Gateway) finish(w *recorder, r *http.Request, x *exchange, id string) {
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
		m.Request(routeName, r.Method, status, dur, x.upDur)
	}
	if !g.settings.AccessLog || g.opts.AccessLog == nil {
		return
	}
	g.opts.AccessLog.Log(&accesslog.Entry{
		Time: x.start, ID: id, Stage: stageName, Route: routeName, Method: r.Method,
		Path: g.scrub.String(r.URL.EscapedPath()), Status: status, Bytes: w.bytes,
		Duration: dur, UpstreamDuration: x.upDur, Error: x.errCode,
	})
}

func slogString(k, v string) slog.Attr { return slog.String(k, v) }
