package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// The routes of bench/faults/keyward.yaml, as the load sends them and the
// upstream logs them.
const (
	routePlain   = "plain"
	routeCached  = "cached"
	routeLimited = "limited"
	routeGuarded = "guarded"
	routeStream  = "stream"
)

// streamEvents is how many events a stream carries before its end event.
const streamEvents = 10

// pad is 64 hex characters derived from route and id: a body built from it
// can only be the answer to that request.
func pad(route, id string) string {
	sum := sha256.Sum256([]byte(route + "/" + id))
	return hex.EncodeToString(sum[:])
}

// responseBody is what the upstream answers for id on route (1.6 KB):
// both names, then a pad derived from them.
func responseBody(route, id string) []byte {
	p := pad(route, id)
	var b bytes.Buffer
	b.Grow(1700)
	b.WriteString(`{"route":"` + route + `","id":"` + id + `","pad":"`)
	for range 24 {
		b.WriteString(p)
	}
	b.WriteString("\"}\n")
	return b.Bytes()
}

// requestBody is what the load POSTs for id, and what the upstream checks
// it received whole.
func requestBody(id string) []byte {
	p := pad("request", id)
	var b bytes.Buffer
	b.WriteString(`{"id":"` + id + `","data":"`)
	for range 8 {
		b.WriteString(p)
	}
	b.WriteString("\"}\n")
	return b.Bytes()
}

// streamEvent is the i-th event of id's stream.
func streamEvent(id string, i int) []byte {
	n := strconv.Itoa(i)
	return []byte("id: " + n + "\ndata: " + id + " " + n + "\n\n")
}

// streamEnd is the event that ends id's stream: a stream without it was
// cut, whatever its framing says.
func streamEnd(id string) []byte { return []byte("event: end\ndata: " + id + "\n\n") }

// streamBody is the whole body of id's stream.
func streamBody(id string) []byte {
	var b bytes.Buffer
	for i := range streamEvents {
		b.Write(streamEvent(id, i))
	}
	b.Write(streamEnd(id))
	return b.Bytes()
}
