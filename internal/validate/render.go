package validate

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
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

// Render returns the status and JSON body answering a refused request:
//
//	{"error":{"code":"validation_failed","message":"...","violations":[{"in":"body","path":"/email","message":"..."}]}}
//
// The shape matches every other keyward error, with violations added so a
// front end can place each message next to its field.
func Render(vs []Violation) (status int, body []byte) {
	type errorBody struct {
		Code       string      `json:"code"`
		Message    string      `json:"message"`
		Violations []Violation `json:"violations"`
	}
	msg := "the request is invalid: 1 problem"
	if len(vs) != 1 {
		msg = "the request is invalid: " + strconv.Itoa(len(vs)) + " problems"
	}
	if vs == nil {
		vs = []Violation{}
	}
	b, err := json.Marshal(struct {
		Error errorBody `json:"error"`
	}{errorBody{Code: Code(vs), Message: msg, Violations: vs}})
	if err != nil {
		// Violations hold only strings; Marshal cannot fail on them.
		panic("validate: marshaling violations: " + err.Error())
	}
	return Status(vs), append(b, '\n')
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
