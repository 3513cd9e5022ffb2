package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// hostKey names a pool by what the request URL says, so finding the pool
// costs no string building per request.
type hostKey struct{ scheme, host string }

// hostPool holds the connections to one upstream host.
type hostPool struct {
	t    *Transport
	addr string      // host:port to dial
	tls  *tls.Config // nil for http

	mu      sync.Mutex
	idle    []*conn // oldest first; taken from the end (LIFO keeps the warm ones busy)
	open    int     // connections dialed and not closed (counted only when maxConns > 0)
	waiters []chan *conn
	reaper  *time.Timer
	reaping bool
}

// conn is one upstream connection. Between exchanges it holds no buffers:
// the reader and writer come from pools, so idle connections cost a socket
// and this struct only.
type conn struct {
	pool   *hostPool
	nc     net.Conn
	br     *bufio.Reader // attached for the length of one exchange
	abort  func()        // nc.Close, made once: a context.AfterFunc target
	sock   socket        // checks the socket under nc for pending bytes (see quiet)
	reused bool
	idleAt time.Time
	closed atomic.Bool

	// readLimit bounds what the response headers may consume; nread is
	// what this exchange has read, to tell a stale connection (nothing
	// read) from a failed response.
	readLimit int64
	nread     int64
}

// Read makes conn the bufio.Reader's source, enforcing the header limit
// the way net/http's persistConn does.
func (c *conn) Read(p []byte) (int, error) {
	if c.readLimit <= 0 {
		return 0, errors.New("response header limit reached")
	}
	if int64(len(p)) > c.readLimit {
		p = p[:c.readLimit]
	}
	n, err := c.nc.Read(p)
	c.readLimit -= int64(n)
	c.nread += int64(n)
	return n, err
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

func getWriter(nc net.Conn) *bufio.Writer {
	w := writers.Get().(*bufio.Writer)
	w.Reset(nc)
	return w
}

func putWriter(w *bufio.Writer) {
	w.Reset(nil)
	writers.Put(w)
}

// attach gives c a reader for one exchange.
func (c *conn) attach(maxHeader int64) {
	c.br = readers.Get().(*bufio.Reader)
	c.br.Reset(c)
	c.readLimit = maxHeader
	c.nread = 0
}

// close closes the connection and frees its place in the pool. Its reader
// is left to the garbage collector: a Read on another goroutine may still
// hold it.
func (c *conn) close() {
	if c.closed.Swap(true) {
		return
	}
	_ = c.nc.Close()
	c.pool.release()
}

// pool returns the pool for scheme://host, creating it on first use.
func (t *Transport) pool(scheme, host string) *hostPool {
	k := hostKey{scheme, host}
	t.mu.RLock()
	p := t.hosts[k]
	t.mu.RUnlock()
	if p != nil {
		return p
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p = t.hosts[k]; p != nil {
		return p
	}
	p = &hostPool{t: t}
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		// No port (or a bare IPv6 literal in brackets): the scheme's.
		name, port = host, "80"
		if scheme == "https" {
			port = "443"
		}
		if len(name) > 1 && name[0] == '[' && name[len(name)-1] == ']' {
			name = name[1 : len(name)-1]
		}
	}
	p.addr = net.JoinHostPort(name, port)
	if scheme == "https" {
		p.tls = t.tlsConfig.Clone()
		if p.tls.ServerName == "" {
			p.tls.ServerName = name
		}
	}
	t.hosts[k] = p
	return p
}

// get returns an idle connection, or dials one; fresh forces a dial.
func (p *hostPool) get(ctx context.Context, fresh bool) (*conn, error) {
	t := p.t
	p.mu.Lock()
	for !fresh && len(p.idle) > 0 {
		n := len(p.idle) - 1
		c := p.idle[n]
		p.idle[n] = nil
		p.idle = p.idle[:n]
		p.mu.Unlock()
		// Checked every time, not only after a pause: bytes that arrived
		// since the connection was pooled answer no request of ours.
		if t.now().Sub(c.idleAt) >= t.idleTimeout || !c.quiet() {
			c.close()
			p.mu.Lock()
			continue
		}
		return c, nil
	}
	if t.maxConns == 0 || p.open < t.maxConns {
		if t.maxConns > 0 {
			p.open++
		}
		p.mu.Unlock()
		return p.dial(ctx)
	}
	// At the limit: wait for a connection to be handed over (non-nil) or
	// for a slot to free up (nil), or for the request to end.
	w := make(chan *conn, 1)
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()
	select {
	case c := <-w:
		if c != nil {
			return c, nil
		}
		return p.dial(ctx)
	case <-ctx.Done():
		p.mu.Lock()
		for i, x := range p.waiters {
			if x == w {
				p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
				p.mu.Unlock()
				return nil, abortError(ctx, nil)
			}
		}
		p.mu.Unlock()
		// Something was handed over as the context ended: pass it on.
		if c := <-w; c != nil {
			p.put(c)
		} else {
			p.release()
		}
		return nil, abortError(ctx, nil)
	}
}

// dial opens a connection; the caller holds a slot in p.open.
func (p *hostPool) dial(ctx context.Context) (*conn, error) {
	t := p.t
	dctx, cancel := context.WithTimeout(ctx, t.dialTimeout)
	defer cancel()
	nc, err := t.dial(dctx, "tcp", p.addr)
	raw := nc
	if err == nil && p.tls != nil {
		tc := tls.Client(nc, p.tls)
		if err = tc.HandshakeContext(dctx); err != nil {
			_ = nc.Close()
		} else if proto := tc.ConnectionState().NegotiatedProtocol; proto != "" && proto != "http/1.1" {
			_ = nc.Close()
			err = fmt.Errorf("TLS negotiated %q, not http/1.1", proto)
		} else {
			nc = tc
		}
	}
	if err != nil {
		p.release()
		if ctx.Err() != nil {
			return nil, abortError(ctx, err)
		}
		return nil, fmt.Errorf("upstream: connecting to %s: %w", p.addr, err)
	}
	c := &conn{pool: p, nc: nc}
	c.abort = func() { _ = nc.Close() }
	c.sock.init(raw)
	return c, nil
}

// release frees a connection slot: a waiter may dial in its place.
func (p *hostPool) release() {
	if p.t.maxConns == 0 {
		return
	}
	p.mu.Lock()
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		w <- nil // the slot passes to the waiter
		return
	}
	p.open--
	p.mu.Unlock()
}

// put returns a connection whose exchange ended cleanly: to a waiting
// request, or to the idle list. It is closed instead when anything is
// left to read on it (see quiet) or when the Transport is retired.
func (p *hostPool) put(c *conn) {
	buffered := 0
	if c.br != nil {
		buffered = c.br.Buffered()
		c.br.Reset(nil)
		readers.Put(c.br)
		c.br = nil
	}
	if buffered > 0 || !c.quiet() {
		c.close()
		return
	}
	c.reused = true
	c.idleAt = p.t.now()
	p.mu.Lock()
	// Read under p.mu, which Retire's closeIdle takes after setting it:
	// either this put sees it, or the connection is idle when closeIdle
	// looks.
	if p.t.retired.Load() {
		p.mu.Unlock()
		c.close()
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		w <- c
		return
	}
	if len(p.idle) >= p.t.maxIdle {
		p.mu.Unlock()
		c.close()
		return
	}
	p.idle = append(p.idle, c)
	if !p.reaping {
		p.reaping = true
		if p.reaper == nil {
			p.reaper = time.AfterFunc(p.t.idleTimeout, p.reap)
		} else {
			p.reaper.Reset(p.t.idleTimeout)
		}
	}
	p.mu.Unlock()
}

// reap closes connections idle for longer than the idle timeout, so a
// quiet upstream does not keep sockets open forever, and re-arms itself
// while any connection is idle.
func (p *hostPool) reap() {
	now := p.t.now()
	p.mu.Lock()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idleAt) >= p.t.idleTimeout {
		n++
	}
	expired := make([]*conn, n)
	copy(expired, p.idle[:n])
	rest := copy(p.idle, p.idle[n:])
	clear(p.idle[rest:])
	p.idle = p.idle[:rest]
	if rest > 0 {
		p.reaper.Reset(p.t.idleTimeout - now.Sub(p.idle[0].idleAt))
	} else {
		p.reaping = false
	}
	p.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
}

func (p *hostPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}
