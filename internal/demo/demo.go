// Package demo runs the whole keyward story on one machine with no account
// or network: a stand-in third-party API that refuses calls without its
// key, keyward in front of it holding the key, and a page on another
// origin that calls keyward with fetch.
package demo

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/keyward/keyward/internal/accesslog"
	"github.com/keyward/keyward/internal/gateway"
	"github.com/keyward/keyward/internal/server"
)

// Options configures the demo.
type Options struct {
	// Listen is the gateway's address. Default "127.0.0.1:8080".
	Listen string
	// Page is the address of the demo page, a second origin.
	// Default "127.0.0.1:8081".
	Page string
	// Out receives the URLs and instructions; Log the gateway's log.
	Out, Log io.Writer
}

//go:embed keyward.yaml.tmpl
var configTemplate string

//go:embed page.html
var pageHTML string

// KeyEnv is the environment variable name the demo config reads the key
// from; the demo supplies it without touching the process environment.
const KeyEnv = "KEYWARD_DEMO_KEY"

// Run starts the stand-in API, the page and the gateway, and serves until
// ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8080"
	}
	if o.Page == "" {
		o.Page = "127.0.0.1:8081"
	}
	key := newKey()

	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("starting the stand-in API: %w", err)
	}
	pageLn, err := net.Listen("tcp", o.Page)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("starting the demo page on %s (use -page to pick another address): %w", o.Page, err)
	}
	dir, err := os.MkdirTemp("", "keyward-demo-")
	if err != nil {
		return fmt.Errorf("creating a temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "keyward.yaml")
	var cfg strings.Builder
	var quoted []string
	for _, origin := range pageOrigins(o.Page) {
		quoted = append(quoted, strconv.Quote(origin))
	}
	vars := map[string]string{"Listen": o.Listen, "Origins": strings.Join(quoted, ", "), "API": apiLn.Addr().String()}
	if err := template.Must(template.New("cfg").Parse(configTemplate)).Execute(&cfg, vars); err != nil {
		return fmt.Errorf("rendering the demo config: %w", err)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		return fmt.Errorf("writing the demo config: %w", err)
	}

	logger := slog.New(slog.NewJSONHandler(o.Log, nil))
	access := accesslog.New(o.Log, true)
	defer access.Close()
	srv, err := server.New(cfgPath, gateway.Options{
		Logger:    logger,
		AccessLog: access,
		Getenv: func(name string) string {
			if name == KeyEnv {
				return key
			}
			return ""
		},
	})
	if err != nil {
		return err
	}
	gwLn, _, err := srv.Listen()
	if err != nil {
		return fmt.Errorf("%w (use -listen to pick another address)", err)
	}

	api := &http.Server{Handler: API(key), ReadHeaderTimeout: 5 * time.Second}
	page := &http.Server{Handler: Page("http://" + o.Listen), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = api.Serve(apiLn) }()
	go func() { _ = page.Serve(pageLn) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = api.Shutdown(sctx)
		_ = page.Shutdown(sctx)
	}()

	fmt.Fprintf(o.Out, `keyward demo: a stand-in third-party API that needs a key, and keyward in front of it.

  page (another origin):   %[1]s
  gateway:                 http://%[2]s/quote
  stand-in API:            http://%[3]s/v1/quotes/random   (needs the key; the page never sees it)
  gateway config:          %[4]s

Try:
  curl -i 'http://%[2]s/quote?topic=gateways'
  curl -i 'http://%[3]s/v1/quotes/random'          # 401 without the key
  curl -i -X POST 'http://%[2]s/quote'             # 405: only GET is allowed

Open the page in a browser and press the buttons. Ctrl-C stops everything.
`, strings.Join(pageOrigins(o.Page), "/ or ")+"/", o.Listen, apiLn.Addr(), cfgPath)
	return srv.Serve(ctx, gwLn, nil)
}

// pageOrigins are the origins the demo page may be opened as: the address
// given and, for a loopback one, its other usual spelling (a browser sends
// http://localhost:8081 for a page opened as localhost, and that is
// another origin than http://127.0.0.1:8081).
func pageOrigins(page string) []string {
	out := []string{"http://" + page}
	host, port, err := net.SplitHostPort(page)
	if err != nil {
		return out
	}
	switch host {
	case "127.0.0.1":
		out = append(out, "http://"+net.JoinHostPort("localhost", port))
	case "localhost":
		out = append(out, "http://"+net.JoinHostPort("127.0.0.1", port))
	}
	return out
}

func newKey() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "demo_sk_" + hex.EncodeToString(b[:])
}

var quotes = []struct{ Topic, Text, Author string }{
	{"gateways", "A key in the browser is a key on the internet.", "every security review"},
	{"limits", "The bill arrives whether or not you meant to call the API.", "an operator"},
	{"cors", "CORS protects users, not your API key.", "the fetch spec, paraphrased"},
}

// API is the stand-in third-party API: GET /v1/quotes/random answers only
// with "Authorization: Bearer KEY".
func API(key string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/quotes/random", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer "+key {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"missing or wrong API key"}` + "\n"))
			return
		}
		q := quotes[time.Now().UnixNano()%int64(len(quotes))]
		if t := r.URL.Query().Get("topic"); t != "" {
			for _, c := range quotes {
				if c.Topic == t {
					q = c
				}
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"topic": q.Topic, "quote": q.Text, "author": q.Author})
	})
	return mux
}

// Page serves the demo page, which calls the gateway at gatewayURL.
func Page(gatewayURL string) http.Handler {
	body := strings.ReplaceAll(pageHTML, "{{GATEWAY}}", gatewayURL)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, body)
	})
}
