package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/keyward/keyward/internal/httpsyntax"
)

// defaultUserAgent is what net/http sends when a request has no
// User-Agent header at all; kept so that swapping transports changes
// nothing on the wire. (keyward always sets its own.)
const defaultUserAgent = "Go-http-client/1.1"

// writeHead writes the request line and headers into w without flushing.
// It writes them itself rather than with Request.Write: that one sorts
// the header keys (a slice per request), builds the request URI string and
// goes through a transferWriter, which costs about twice the time and
// several allocations for the same bytes (BenchmarkWriteHead). Names,
// values, the method, the host and the request target are validated as
// strictly as net/http's Transport does, because a CR or LF let through
// here is request splitting. The body framing follows Request.Write:
// Content-Length when known, chunked otherwise, and "Content-Length: 0"
// for a bodiless POST, PUT or PATCH, which some servers require.
//
// A validation error may leave partial bytes in w; the caller closes the
// connection.
func writeHead(w *bufio.Writer, req *http.Request, body io.Reader, wantsClose bool) error {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	} else if !httpsyntax.IsToken(method) {
		return fmt.Errorf("upstream: invalid method %q", method)
	}
	u := req.URL
	host := req.Host
	if host == "" {
		host = u.Host
	}
	// validate refused an empty URL host, so host is never empty here.
	if !httpsyntax.ValidHost(host) {
		return fmt.Errorf("upstream: invalid host %q", host)
	}
	_, _ = w.WriteString(method)
	_ = w.WriteByte(' ')
	if u.Opaque != "" {
		uri := u.RequestURI()
		if !validTarget(uri) {
			return fmt.Errorf("upstream: invalid request target %q", uri)
		}
		_, _ = w.WriteString(uri)
	} else {
		path := u.EscapedPath()
		if path == "" {
			path = "/"
		}
		if !validTarget(path) || !validTarget(u.RawQuery) {
			return fmt.Errorf("upstream: control character or space in request URL %q", path)
		}
		_, _ = w.WriteString(path)
		if u.ForceQuery || u.RawQuery != "" {
			_ = w.WriteByte('?')
			_, _ = w.WriteString(u.RawQuery)
		}
	}
	_, _ = w.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = w.WriteString(host)
	_, _ = w.WriteString("\r\n")
	if vs, ok := req.Header["User-Agent"]; !ok {
		_, _ = w.WriteString("User-Agent: " + defaultUserAgent + "\r\n")
	} else if len(vs) > 0 && vs[0] != "" {
		if err := writeField(w, "User-Agent", vs[0]); err != nil {
			return err
		}
	}
	for name, vs := range req.Header {
		switch name {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			// Written above or below from the request's fields, as
			// Request.Write does, so a header cannot contradict the framing.
			continue
		}
		if !httpsyntax.IsToken(name) {
			return fmt.Errorf("upstream: invalid header name %q", name)
		}
		for _, v := range vs {
			if err := writeField(w, name, v); err != nil {
				return err
			}
		}
	}
	if req.Close && !httpsyntax.HasToken(req.Header["Connection"], "close") {
		_, _ = w.WriteString("Connection: close\r\n")
	}
	switch {
	case body == nil:
		if req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch {
			_, _ = w.WriteString("Content-Length: 0\r\n")
		}
	case req.ContentLength > 0 && len(req.Trailer) == 0:
		_, _ = w.WriteString("Content-Length: ")
		_, _ = w.Write(strconv.AppendInt(w.AvailableBuffer(), req.ContentLength, 10))
		_, _ = w.WriteString("\r\n")
	default:
		_, _ = w.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			names := make([]string, 0, len(req.Trailer))
			for name := range req.Trailer {
				if !httpsyntax.IsToken(name) {
					return fmt.Errorf("upstream: invalid trailer name %q", name)
				}
				names = append(names, name)
			}
			_, _ = w.WriteString("Trailer: " + strings.Join(names, ", ") + "\r\n")
		}
	}
	_, _ = w.WriteString("\r\n")
	return nil
}

// writeField writes one "Name: value" line, refusing control characters
// in the value (RFC 9110 §5.5) and trimming surrounding whitespace, as
// Request.Write does.
func writeField(w *bufio.Writer, name, v string) error {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < ' ' && b != '\t' || b == 0x7f {
			return fmt.Errorf("upstream: invalid value for header %q", name)
		}
	}
	v = strings.Trim(v, " \t")
	_, _ = w.WriteString(name)
	_, _ = w.WriteString(": ")
	_, _ = w.WriteString(v)
	_, _ = w.WriteString("\r\n")
	return nil
}

// bodyReadError is a failure to read the request body (as opposed to
// writing it to the upstream): the gateway answers it as the client's
// problem (413 for an oversized body), so it is reported as such.
type bodyReadError struct{ err error }

func (e *bodyReadError) Error() string { return "upstream: reading request body: " + e.err.Error() }
func (e *bodyReadError) Unwrap() error { return e.err }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeBody sends the request body after the head already in w, closes the
// body, and reports the result on done. On a failure it closes the
// connection after reporting, so the goroutine waiting for the response
// wakes up and finds the reason in done.
func writeBody(c *conn, w *bufio.Writer, req *http.Request, body io.ReadCloser, done chan<- error) {
	err := copyBody(w, req, body)
	_ = body.Close()
	putWriter(w)
	done <- err
	if err != nil {
		c.close()
	}
}

func copyBody(w *bufio.Writer, req *http.Request, body io.Reader) error {
	if req.ContentLength > 0 && len(req.Trailer) == 0 {
		r := &bodySource{r: body}
		n, err := io.CopyN(w, r, req.ContentLength)
		switch {
		case r.err != nil && r.err != io.EOF:
			return &bodyReadError{r.err}
		case n < req.ContentLength && err == io.EOF:
			return &bodyReadError{fmt.Errorf("body is %d bytes, shorter than its ContentLength %d", n, req.ContentLength)}
		case err != nil:
			return err
		}
		return w.Flush()
	}
	// Chunked: each chunk is flushed as it is read, so a streamed upload
	// reaches the upstream as it arrives (net/http does the same).
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			_, _ = w.Write(strconv.AppendUint(w.AvailableBuffer(), uint64(n), 16))
			_, _ = w.WriteString("\r\n")
			_, _ = w.Write(buf[:n])
			_, _ = w.WriteString("\r\n")
			if err := w.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return &bodyReadError{rerr}
		}
	}
	_, _ = w.WriteString("0\r\n")
	for name, vs := range req.Trailer {
		for _, v := range vs {
			if err := writeField(w, name, v); err != nil {
				return err
			}
		}
	}
	_, _ = w.WriteString("\r\n")
	return w.Flush()
}

// bodySource reads the request body for io.CopyN, remembering a read
// error so it is told apart from a write error. Being a plain Reader, it
// also hides the body's WriterTo, so the copy goes through the
// bufio.Writer's buffer, which already holds the head: a small body
// leaves in the same write as the headers.
type bodySource struct {
	r   io.Reader
	err error
}

func (s *bodySource) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

// validTarget refuses controls and spaces in the request target: they
// would end the request line early.
func validTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b <= ' ' || b == 0x7f {
			return false
		}
	}
	return true
}
