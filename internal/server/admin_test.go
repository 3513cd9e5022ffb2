package server_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/server"
)

// TestAdminPause: the admin API's kill switch on the memory store: a
// route or every route paused and resumed at once, unknown routes and
// browsers refused without changing anything.
func TestAdminPause(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "keyward.yaml")
	writeConfig(t, path, up.URL, "a", "b")
	srv, err := server.New(path, gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := net.Listen("tcp", "127.0.0.1:0")
	adm, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pub, adm) }()
	defer func() { cancel(); <-done }()
	base, admin := "http://"+pub.Addr().String(), "http://"+adm.Addr().String()
	deadline := time.Now().Add(5 * time.Second)
	for code, _ := get(t, admin+"/readyz"); code != 200; code, _ = get(t, admin+"/readyz") {
		if time.Now().After(deadline) {
			t.Fatal("not ready")
		}
		<-time.After(10 * time.Millisecond) // polling readiness
	}
	post := func(p string, header ...string) (int, string) {
		req, _ := http.NewRequest("POST", admin+p, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	status := func(route string) int {
		code, _ := get(t, base+"/"+route)
		return code
	}
	steps := []struct {
		do, header   string
		code         int
		body         string
		wantA, wantB int
	}{
		{"/admin/pause/a", "", 200, `{"all":false,"routes":["a"]}`, 503, 200},
		{"/admin/pause/nope", "", 404, `"unknown_route"`, 503, 200},
		{"/admin/resume/a", "Origin", 403, `"browser_refused"`, 503, 200},
		{"/admin/resume/a", "Sec-Fetch-Site", 403, `"browser_refused"`, 503, 200},
		{"/admin/resume/a", "", 200, `{"all":false,"routes":[]}`, 200, 200},
		{"/admin/pause", "", 200, `{"all":true,"routes":[]}`, 503, 503},
		{"/admin/resume", "", 200, `{"all":false,"routes":[]}`, 200, 200},
	}
	for _, st := range steps {
		var code int
		var body string
		if st.header != "" {
			code, body = post(st.do, st.header, "https://evil.example")
		} else {
			code, body = post(st.do)
		}
		if code != st.code || !strings.Contains(body, st.body) {
			t.Errorf("POST %s (%s): %d %s, want %d %s", st.do, st.header, code, body, st.code, st.body)
		}
		if a, b := status("a"), status("b"); a != st.wantA || b != st.wantB {
			t.Errorf("after POST %s (%s): /a %d /b %d, want %d %d", st.do, st.header, a, b, st.wantA, st.wantB)
		}
	}
	if code, body := get(t, admin+"/admin/pauses"); code != 200 || body != "{\"all\":false,\"routes\":[]}\n" {
		t.Errorf("GET /admin/pauses: %d %q", code, body)
	}
}
