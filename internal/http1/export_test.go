package http1

import "net"

// ReadBuffers reports how many of s's connections hold a read buffer. The
// caller must know that no connection goroutine is changing its buffer
// (TestIdleConnHoldsNoReadBuffer learns it from the WaitRead calls).
func ReadBuffers(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.br != nil {
			n++
		}
	}
	return n
}

// Watches reports how many watchers s's watch loop has started.
func Watches(s *Server) int64 { return s.watches.Load() }

// PendingByte reports whether a watcher of s has read a byte that waits
// for the next request.
func PendingByte(s *Server) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.wmu.Lock()
		has := c.cr.hasByte
		c.wmu.Unlock()
		if has {
			return true
		}
	}
	return false
}

// Contracts reports whether c offers the methods the server looks for on
// the framing guard's connections: WaitRead, and WatchRead for the hang-up
// watch.
func Contracts(c net.Conn) (waits, watches bool) {
	_, waits = c.(readWaiter)
	_, watches = c.(hangUpWatcher)
	return waits, watches
}

// Conns reports how many connections s holds.
func Conns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// IdleConns reports how many of s's connections wait between requests.
func IdleConns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.state.Load() == stateIdle {
			n++
		}
	}
	return n
}
