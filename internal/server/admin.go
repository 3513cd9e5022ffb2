package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/keyward/keyward/internal/ratelimit"
)

// adminHandler serves the admin listener: health, readiness, metrics and
// the kill switch (docs/ADMIN.md).
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		reason := s.notReady()
		if reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "{\"ready\":false,\"reason\":%q}\n", reason)
			return
		}
		_, _ = w.Write([]byte("{\"ready\":true}\n"))
	})
	mux.Handle("GET /metrics", s.opts.Metrics.Handler())
	mux.HandleFunc("GET /admin/pauses", s.adminPauses)
	for _, verb := range []string{"pause", "resume"} {
		h := s.adminPause(verb == "pause")
		mux.HandleFunc("POST /admin/"+verb, h)
		mux.HandleFunc("POST /admin/"+verb+"/{route}", h)
	}
	return mux
}

// adminPause pauses (or resumes) the route named in the path, or every
// route. The admin listener has no credentials of its own, so a change is
// taken only from this machine (a loopback peer), and never from a
// browser: a page the operator visits could otherwise post to
// localhost:9090 (a form needs no preflight), and a browser's request
// carries Origin or Sec-Fetch-Site. Pausing stops spending; resuming
// spends again, which is why neither is open to the network even when
// admin.listen is (for probes and scrapes).
func (s *Server) adminPause(pause bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if code, msg := adminRefusal(r); code != "" {
			adminError(w, http.StatusForbidden, code, msg)
			return
		}
		p, ok := s.opts.LimitStore.(ratelimit.Pauses)
		if !ok {
			adminError(w, http.StatusNotImplemented, "not_supported", "this store keeps no pauses")
			return
		}
		route := r.PathValue("route")
		if route != ratelimit.AllRoutes && !slices.Contains(s.routeNames(), route) {
			adminError(w, http.StatusNotFound, "unknown_route", fmt.Sprintf("no route named %q", route))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		if err := p.Pause(ctx, route, pause); err != nil {
			adminError(w, http.StatusServiceUnavailable, "store_unavailable", "the store did not take the change: "+err.Error())
			return
		}
		what := route
		if route == ratelimit.AllRoutes {
			what = "every route"
		}
		verb := map[bool]string{true: "paused", false: "resumed"}[pause]
		s.log.Warn("kill switch: "+verb, "route", what, "by", "admin API")
		s.writePauses(w, r.Context(), p)
	}
}

// adminPauses lists what is paused now.
func (s *Server) adminPauses(w http.ResponseWriter, r *http.Request) {
	p, ok := s.opts.LimitStore.(ratelimit.Pauses)
	if !ok {
		adminError(w, http.StatusNotImplemented, "not_supported", "this store keeps no pauses")
		return
	}
	s.writePauses(w, r.Context(), p)
}

// writePauses answers with the pauses as the store has them:
// {"all": false, "routes": ["chat"]}.
func (s *Server) writePauses(w http.ResponseWriter, ctx context.Context, p ratelimit.Pauses) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	all, routes, err := p.PausedRoutes(ctx)
	if err != nil {
		adminError(w, http.StatusServiceUnavailable, "store_unavailable", "reading the pauses: "+err.Error())
		return
	}
	if routes == nil {
		routes = []string{}
	}
	body, _ := json.Marshal(map[string]any{"all": all, "routes": routes})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}

// adminRefusal says why r may not change anything (a stable code and a
// message), or "" when it may.
func adminRefusal(r *http.Request) (code, msg string) {
	if r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != "" {
		return "browser_refused", "the admin API does not take changes from a browser; use curl or keyward pause"
	}
	if r.Header.Get("Forwarded") != "" || r.Header.Get("X-Forwarded-For") != "" || r.Header.Get("Via") != "" {
		// A proxy or sidecar on this machine connects from loopback on
		// behalf of someone elsewhere.
		return "loopback_only", "changes are taken only from this machine, not through a proxy; run curl on the host, or keyward pause with a Redis store"
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return "loopback_only", "changes are taken only from this machine (127.0.0.1 or ::1); run curl on the host, or keyward pause with a Redis store"
	}
	return "", ""
}

// routeNames lists the current config's route names.
func (s *Server) routeNames() []string {
	var names []string
	for _, ri := range s.handler.Current().Routes() {
		names = append(names, ri.Name)
	}
	return names
}

// adminError writes keyward's JSON error shape.
func adminError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
