package gateway

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/keyward/keyward/internal/cache"
	"github.com/keyward/keyward/internal/transform"
	"github.com/keyward/keyward/internal/validate"
)

// prepareBody validates the request and runs the request transform. Both
// need the whole body, so only routes that use them buffer it (bounded by
// max_body).
func (g *Gateway) prepareBody(w http.ResponseWriter, r *http.Request, x *exchange) error {
	ep := x.ep
	body, err := g.readBody(w, r, x, ep.maxBody)
	if err != nil {
		return err
	}
	ctype := r.Header.Get("Content-Type")
	if vs := ep.validator.Check(r.URL.Query(), r.Header, ctype, body); len(vs) > 0 {
		msg := "the request is invalid: " + strconv.Itoa(len(vs)) + " problem"
		if len(vs) > 1 {
			msg += "s"
		}
		return &refusal{status: validate.Status(vs), code: validate.Code(vs), msg: msg, violations: vs}
	}
	if t := ep.transform; t != nil && t.Request != nil {
		res, err := t.Request.Run(r.Context(), body, ctype, ep.vars(x, r, true))
		if err != nil {
			return transformRefusal(err)
		}
		body = res.Body
		if !res.Passed && t.ContentType != "" {
			x.ctype = t.ContentType
		}
		if t.Method != "" {
			r.Method = t.Method
		}
	}
	if ep.llm != nil {
		// On the bytes that will be sent, after any transform: the model
		// and the answer's bound are checked where they take effect.
		if body, err = g.prepareLLM(r, x, body); err != nil {
			return err
		}
	}
	setBody(r, body)
	return nil
}

// setBody makes body r's body, to be sent upstream as it is.
func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	if len(body) == 0 {
		r.Body = http.NoBody
	}
}

// vars are what a jq expression may read besides its input; secrets only
// for the request side.
func (ep *endpoint) vars(x *exchange, r *http.Request, withSecrets bool) transform.Vars {
	v := transform.Vars{Stage: ep.stageVars, Params: map[string]string{}, Query: ep.allowedQuery(r)}
	for i := range x.params.Len() {
		n, val := x.params.At(i)
		v.Params[n] = val
	}
	if x.caller.Kind != "" {
		claims := make(map[string]any, len(x.caller.Claims))
		for k, c := range x.caller.Claims { // shared by cached identities: copied
			claims[k] = c
		}
		v.Caller = map[string]any{"kind": x.caller.Kind, "id": x.caller.ID, "claims": claims}
	}
	if withSecrets {
		v.Secrets = ep.transformSecrets
	}
	return v
}

// allowedQuery returns the client's query parameters that reach the
// upstream: what the cache keys on and what jq may read as $query.
func (ep *endpoint) allowedQuery(r *http.Request) url.Values {
	q := url.Values{}
	for name, vals := range r.URL.Query() {
		if ep.queryAllow[name] && !ep.isSetParam(name) {
			q[name] = vals
		}
	}
	return q
}

// ModifyResponse is the proxy's ResponseHook: it keeps a response that
// set a cookie out of the cache, and runs the route's response transform
// on a JSON response. Other content (event streams among them) passes
// untouched and is never buffered.
func (x *exchange) ModifyResponse(resp *http.Response) error {
	if x.SetCookie && x.ep.cache != nil {
		// The cookie was dropped, but a response that set one is about one
		// client's session: never store it for others.
		cache.DoNotStore(resp.Request.Context())
	}
	if x.spend.req != nil {
		// Usage is read as the body passes, before a response transform
		// could reshape it, and never holds a stream back.
		x.spend.meter = x.spend.req.Meter()
		resp.Body = x.spend.meter.Body(resp.Body)
	}
	t := x.ep.transform
	if t == nil || t.Response == nil || !isJSON(resp.Header.Get("Content-Type")) {
		return nil
	}
	if resp.Request.Method == http.MethodHead {
		// No body to transform: the length of the GET's answer is unknown.
		delete(resp.Header, "Content-Length")
		return nil
	}
	body, tooLarge, err := validate.ReadBody(resp.Body, t.Response.MaxBytes())
	resp.Body.Close()
	if err != nil {
		return err // a broken upstream body: 502
	}
	if tooLarge {
		return &transform.RunError{Code: transform.CodeFailed, Status: http.StatusBadGateway, Side: transform.Response,
			Message: "the upstream response could not be transformed", Detail: "upstream body larger than max_bytes", Kind: transform.ErrTooLarge}
	}
	// Masked before jq sees it: an expression that reshapes a string
	// (case, base64, slices) would hide an echoed secret from the scan of
	// its output.
	x.g.scrub.MaskBytes(body)
	res, err := t.Response.Run(resp.Request.Context(), body, resp.Header.Get("Content-Type"), x.ep.vars(x, x.in, false))
	if err != nil {
		return err
	}
	// jq decodes escapes the scrubber could not know (\u0041, \/): what it
	// outputs is searched again, in its own encoding.
	x.g.scrub.MaskBytes(res.Body)
	resp.Body = io.NopCloser(bytes.NewReader(res.Body))
	resp.ContentLength = int64(len(res.Body))
	resp.Header["Content-Length"] = []string{strconv.Itoa(len(res.Body))}
	// The body changed: validators of the upstream's body no longer hold.
	delete(resp.Header, "Etag")
	delete(resp.Header, "Content-Md5")
	return nil
}

// transformRefusal answers a failed transform with its client-safe message
// and logs the scrubbed detail.
func transformRefusal(err error) error {
	var re *transform.RunError
	if !errors.As(err, &re) {
		re = &transform.RunError{Code: transform.CodeFailed, Status: http.StatusBadGateway, Message: "the transform failed", Detail: err.Error()}
	}
	return &refusal{status: re.Status, code: re.Code, msg: re.Message, cause: re, logMsg: "transform failed", level: slog.LevelWarn}
}

func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}
