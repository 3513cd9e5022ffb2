package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// runUpstream serves the routes' upstream until ctx ends or the process is
// killed, which is what the fault run does to it.
func runUpstream(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9201", "listen address")
	idLog := fs.String("log", "", "file every request's route and id are appended to, before it is answered (required)")
	events := fs.String("events", "", "file the time it starts listening is appended to, as `UNIX_NS upstream_up`")
	interval := fs.Duration("interval", 30*time.Millisecond, "pause between two events of a stream")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *idLog == "" {
		return errors.New("upstream: -log is required")
	}
	f, err := os.OpenFile(*idLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("opening the id log: %w", err)
	}
	defer f.Close()
	u := &upstream{ids: f, interval: *interval}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	if *events != "" {
		if err := appendEvent(*events, time.Now(), "upstream_up"); err != nil {
			return err
		}
	}
	srv := &http.Server{
		Handler:           u.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	return nil
}

// appendEvent appends `UNIX_NS name` to the events file, as the scripts do.
func appendEvent(path string, t time.Time, name string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("opening the events file: %w", err)
	}
	_, err = fmt.Fprintf(f, "%d %s\n", t.UnixNano(), name)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the events file: %w", err)
	}
	return nil
}

type upstream struct {
	ids      io.Writer // one Write per request: an *os.File in O_APPEND mode
	interval time.Duration
}

func (u *upstream) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /plain", u.fixed(routePlain))
	mux.HandleFunc("GET /guarded", u.fixed(routeGuarded))
	mux.HandleFunc("GET /cached", u.cached)
	mux.HandleFunc("POST /limited", u.limited)
	mux.HandleFunc("GET /stream", u.stream)
	return mux
}

// record appends the request's route and id to the id log with one write,
// which the kernel keeps even when the process is killed right after it.
func (u *upstream) record(route, id string) error {
	_, err := u.ids.Write([]byte(route + " " + id + "\n"))
	return err
}

// begin checks the credential the gateway injects and records the request;
// it answers the request itself and returns false when it cannot go on.
func (u *upstream) begin(w http.ResponseWriter, r *http.Request, route, id string) bool {
	if r.Header.Get("Authorization") != "Bearer bench-secret" {
		http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return false
	}
	if id == "" {
		http.Error(w, `{"message":"no id"}`, http.StatusBadRequest)
		return false
	}
	if err := u.record(route, id); err != nil {
		http.Error(w, `{"message":"cannot record"}`, http.StatusInternalServerError)
		return false
	}
	return true
}

func (u *upstream) fixed(route string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if u.begin(w, r, route, id) {
			writeJSON(w, responseBody(route, id))
		}
	}
}

func (u *upstream) cached(w http.ResponseWriter, r *http.Request) {
	id := "k" + r.URL.Query().Get("k")
	if u.begin(w, r, routeCached, id) {
		writeJSON(w, responseBody(routeCached, id))
	}
}

// limited checks that the body arrived whole before it answers: on a route
// with a budget the gateway reads it completely before dialling.
func (u *upstream) limited(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if !u.begin(w, r, routeLimited, id) {
		return
	}
	got, err := io.ReadAll(r.Body)
	if err != nil || !bytes.Equal(got, requestBody(id)) {
		http.Error(w, `{"message":"the request body is not the one sent"}`, http.StatusBadRequest)
		return
	}
	writeJSON(w, responseBody(routeLimited, id))
}

func (u *upstream) stream(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if !u.begin(w, r, routeStream, id) {
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	t := time.NewTimer(0)
	defer t.Stop()
	for i := range streamEvents {
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
		if _, err := w.Write(streamEvent(id, i)); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		t.Reset(u.interval)
	}
	w.Write(streamEnd(id))
}

func writeJSON(w http.ResponseWriter, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}
