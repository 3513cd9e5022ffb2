package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// textLog rewrites the access log's JSON lines as slog's text handler
// writes its own (key=value, in the same order), so that a terminal shows
// one format. The access log writes whole lines, buffered; a line that
// does not parse passes through unchanged.
type textLog struct {
	mu   sync.Mutex
	w    io.Writer
	part []byte // an unfinished line
}

func (t *textLog) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = append(t.part, p...)
	var out []byte
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			break
		}
		out = appendText(out, t.part[:i])
		t.part = t.part[i+1:]
	}
	if len(out) > 0 {
		if _, err := t.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// appendText appends the JSON object line as key=value pairs and a
// newline.
func appendText(out, line []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var pairs []byte
	ok := func() bool {
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			return false
		}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return false
			}
			v, err := dec.Token()
			if _, nested := v.(json.Delim); err != nil || nested {
				return false // the access log writes flat objects only
			}
			key, _ := k.(string)
			if len(pairs) > 0 {
				pairs = append(pairs, ' ')
			}
			pairs = append(pairs, key...)
			pairs = append(pairs, '=')
			if ts, isString := v.(string); key == "time" && isString {
				// slog's text handler writes milliseconds.
				if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
					v = t.Format("2006-01-02T15:04:05.000Z07:00")
				}
			}
			pairs = appendValue(pairs, v)
		}
		return true
	}()
	if !ok {
		out = append(out, line...)
	} else {
		out = append(out, pairs...)
	}
	return append(out, '\n')
}

func appendValue(b []byte, v json.Token) []byte {
	switch v := v.(type) {
	case string:
		if v == "" || strings.ContainsAny(v, " =\"\\") || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return strconv.AppendQuote(b, v)
		}
		return append(b, v...)
	case json.Number:
		return append(b, v...)
	case bool:
		return strconv.AppendBool(b, v)
	default:
		return append(b, `""`...)
	}
}
