package gateway

import (
	"io"
	"net/http"
	"time"
)

// slowBodyGuard bounds how long a client may take to send its body. The
// deadline is lifted once the body has been read: it must not cut a long
// response that follows (net/http keeps reading the connection in the
// background to notice a client that goes away).
func (g *Gateway) slowBodyGuard(w http.ResponseWriter, body io.ReadCloser) io.ReadCloser {
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(g.opts.Now().Add(g.settings.ReadBodyTimeout)) != nil {
		return body // not a net/http connection (a test recorder): nothing to bound
	}
	return &deadlineBody{ReadCloser: body, rc: rc}
}

type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
