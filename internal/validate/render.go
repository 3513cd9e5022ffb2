package validate

import (
	"errors"
	"io"
	"net/http"
)

// Status returns the HTTP status for a non-empty set of violations: 413 when
// the body is too large, 415 when its content type is refused, 400 otherwise.
// The order follows what a client must fix first.
func Status(vs []Violation) int {
	status := http.StatusOK
	for _, v := range vs {
		switch v.Code {
		case CodeTooLarge:
			return http.StatusRequestEntityTooLarge
		case CodeMediaType:
			status = http.StatusUnsupportedMediaType
		default:
			if status == http.StatusOK {
				status = http.StatusBadRequest
			}
		}
	}
	return status
}

// Code returns the stable error code matching Status(vs).
func Code(vs []Violation) string {
	switch Status(vs) {
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusUnsupportedMediaType:
		return CodeMediaType
	}
	return CodeInvalid
}

// ReadBody reads at most max+1 bytes of r, so that Check sees an oversize
// body as too large without the gateway buffering all of it. tooLarge
// reports that r held more than max bytes; the returned bytes are then
// truncated and must not be forwarded.
func ReadBody(r io.Reader, max int64) (body []byte, tooLarge bool, err error) {
	if max < 0 {
		return nil, false, errors.New("validate: negative body bound")
	}
	body, err = io.ReadAll(io.LimitReader(r, max+1))
	return body, int64(len(body)) > max, err
}
