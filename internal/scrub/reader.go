package scrub

import (
	"io"
)

// Reader returns a reader of src with every secret masked (same length,
// so Content-Length stays right). It is a Writer read from the other
// side, without the timer: held bytes come with the next read of src, or
// at its end. So it releases the same bytes at the same points as a
// Writer, never depending on what they are, but a stream that pauses
// after a write without a line break waits for its next write; a
// streamed body should go through NewWriter instead.
func (s *Scrubber) Reader(src io.ReadCloser) io.ReadCloser {
	if !s.Active() {
		return src
	}
	z := &reader{src: src}
	z.w = s.NewWriter(&z.out, nil)
	return z
}

type reader struct {
	src io.ReadCloser
	w   *Writer
	in  []byte // what src gave, pooled
	out sink   // what w released, not yet read
	err error  // of src, returned once out is drained
}

// sink collects what a Writer releases.
type sink struct {
	b []byte
	r int
}

func (k *sink) Write(p []byte) (int, error) {
	if k.b == nil {
		k.b = getBuf(len(p))
	}
	if k.r == len(k.b) {
		k.b, k.r = k.b[:0], 0
	}
	k.b = append(k.b, p...)
	return len(p), nil
}

func (z *reader) Read(p []byte) (int, error) {
	for z.out.r == len(z.out.b) {
		if z.err != nil {
			return 0, z.err
		}
		if z.in == nil {
			z.in = getBuf(chunk)
		}
		in := z.in[:chunk]
		n, err := z.src.Read(in)
		if n > 0 {
			_, _ = z.w.Write(in[:n]) // a sink never fails
		}
		if err != nil {
			_ = z.w.Close()
			z.err = err
		}
	}
	n := copy(p, z.out.b[z.out.r:])
	z.out.r += n
	return n, nil
}

func (z *reader) Close() error {
	_ = z.w.Close()
	putBuf(z.in)
	putBuf(z.out.b)
	z.in, z.out.b = nil, nil
	if z.err == nil {
		z.err = io.ErrClosedPipe
	}
	return z.src.Close()
}
