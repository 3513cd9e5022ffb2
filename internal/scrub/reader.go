package scrub

import (
	"io"
	"sync"
)

// chunk is how much a Reader reads from its source at a time.
const chunk = 32 << 10

var bufPool sync.Pool

// Reader returns a reader of src with every secret masked (same length,
// so Content-Length stays right). Memory is bounded: one 32 KiB buffer
// plus the longest secret. A secret split across reads is still caught,
// and bytes are held back only while they could be the start of one.
func (s *Scrubber) Reader(src io.ReadCloser) io.ReadCloser {
	if !s.Active() {
		return src
	}
	return &reader{s: s, src: src}
}

type reader struct {
	s      *Scrubber
	src    io.ReadCloser
	buf    *[]byte
	r, rdy int // buf[r:rdy] is scrubbed and ready; buf[rdy:n] is held
	n      int
	err    error
}

func (z *reader) Read(p []byte) (int, error) {
	if z.buf == nil {
		if b, ok := bufPool.Get().(*[]byte); ok && len(*b) >= chunk+z.s.maxLen {
			z.buf = b
		} else {
			b := make([]byte, chunk+z.s.maxLen)
			z.buf = &b
		}
	}
	buf := *z.buf
	for z.r == z.rdy {
		if z.err != nil {
			if z.rdy < z.n { // the source ended: held bytes are not a secret
				z.rdy = z.n
				continue
			}
			return 0, z.err
		}
		held := copy(buf, buf[z.rdy:z.n])
		z.r, z.rdy, z.n = 0, 0, held
		m, err := z.src.Read(buf[held : held+chunk])
		z.n += m
		z.err = err
		z.s.maskInPlace(buf[:z.n])
		keep := 0
		if err == nil {
			keep = z.s.heldPrefix(buf[:z.n])
		}
		z.rdy = z.n - keep
	}
	n := copy(p, buf[z.r:z.rdy])
	z.r += n
	return n, nil
}

func (z *reader) Close() error {
	if z.buf != nil {
		bufPool.Put(z.buf)
		z.buf = nil
		z.r, z.rdy, z.n = 0, 0, 0
		if z.err == nil {
			z.err = io.ErrClosedPipe
		}
	}
	return z.src.Close()
}
