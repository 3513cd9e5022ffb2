// Package httperror builds the complete HTTP/1.1 responses keyward writes
// straight to a client connection when it refuses a request before any
// handler runs: the framing guard's refusals and the HTTP/1.1 server's
// answers to requests it cannot parse. They carry the gateway's JSON error
// shape, {"error":{"code":"...","message":"..."}}, and close the
// connection.
package httperror

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Response returns the whole response: status line, headers and body. The
// message is sent to the client, so callers never quote the request in it.
func Response(status int, code, msg string) []byte {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	body = append(body, '\n')
	b := make([]byte, 0, 200+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nConnection: close\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	return append(b, body...)
}
