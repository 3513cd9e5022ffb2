package demo

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDemo runs the whole demo: the gateway answers with the stand-in
// API's data, the API refuses calls without the key, and the page calls
// the gateway from another origin.
func TestDemo(t *testing.T) {
	gw, page := freeAddr(t), freeAddr(t)
	out, logs := &lockedBuilder{}, &lockedBuilder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{Listen: gw, Page: page, Out: out, Log: logs}) }()

	// Wait until the gateway answers (the demo prints its URLs first).
	var res *http.Response
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://"+gw+"/quote?topic=cors", nil)
		req.Header.Set("Origin", "http://"+page)
		if res, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway never answered: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling a server started by Run
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var quote map[string]string
	if res.StatusCode != 200 || json.Unmarshal(body, &quote) != nil || quote["topic"] != "cors" {
		t.Fatalf("gateway: %d %s", res.StatusCode, body)
	}
	if res.Header.Get("Access-Control-Allow-Origin") != "http://"+page {
		t.Errorf("the page's origin may not read the answer: %v", res.Header)
	}

	api := regexp.MustCompile(`stand-in API:\s+(http://\S+)`).FindStringSubmatch(out.String())
	if api == nil {
		t.Fatalf("output lacks the stand-in API's URL:\n%s", out.String())
	}
	direct, err := http.Get(api[1])
	if err != nil {
		t.Fatal(err)
	}
	direct.Body.Close()
	if direct.StatusCode != http.StatusUnauthorized {
		t.Errorf("the stand-in API without its key: %d, want 401", direct.StatusCode)
	}

	pg, err := http.Get("http://" + page + "/")
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(pg.Body)
	pg.Body.Close()
	if !strings.Contains(string(html), `fetch("http://`+gw+`/quote`) {
		t.Errorf("the page does not call the gateway:\n%s", html)
	}
	for _, want := range []string{"curl -i 'http://" + gw + "/quote?topic=gateways'", "Ctrl-C stops everything"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// zsh takes an unquoted ? as a glob and refuses the line ("no matches
	// found"): every URL in a curl line is quoted.
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "curl ") && regexp.MustCompile(`(^|\s)http://`).MatchString(line) {
			t.Errorf("unquoted URL in %q", line)
		}
	}

	// The page opened as localhost is another origin than 127.0.0.1; both
	// may call the gateway.
	_, port, _ := net.SplitHostPort(page)
	req, _ := http.NewRequest("GET", "http://"+gw+"/quote", nil)
	req.Header.Set("Origin", "http://localhost:"+port)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != "http://localhost:"+port {
		t.Errorf("the page opened as localhost: %d %v", res.StatusCode, res.Header)
	}
	if strings.Contains(out.String()+logs.String()+string(body)+string(html), "demo_sk_") {
		t.Error("the demo key appears in the output, the log, a response or the page")
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
