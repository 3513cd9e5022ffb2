// Command upstream is the benchmark's stand-in for a third-party API
// (bench/README.md): GET /user/repos returns a fixed 2065-byte JSON body
// when Authorization is exactly "Bearer bench-secret", and 401 otherwise, so
// a proxy that forgets to inject the credential fails the run. It logs and
// records nothing, so it costs the shared cores as little as possible.
//
//	go run ./bench/upstream -addr 127.0.0.1:9001
package main

import (
	"flag"
	"log"
	"net/http"
	"strconv"
	"time"
)

const body = `[{"id":1296269,"node_id":"MDEwOlJlcG9zaXRvcnkxMjk2MjY5","name":"Hello-World","full_name":"octocat/Hello-World","private":false,` +
	`"owner":{"login":"octocat","id":1,"node_id":"MDQ6VXNlcjE=","avatar_url":"https://github.com/images/error/octocat_happy.gif","type":"User","site_admin":false},` +
	`"html_url":"https://github.com/octocat/Hello-World","description":"This your first repo!","fork":false,"url":"https://api.github.com/repos/octocat/Hello-World",` +
	`"clone_url":"https://github.com/octocat/Hello-World.git","homepage":"https://github.com","size":108,"stargazers_count":80,"watchers_count":80,"language":"C",` +
	`"has_issues":true,"has_projects":true,"has_wiki":true,"has_pages":false,"forks_count":9,"archived":false,"disabled":false,"open_issues_count":0,` +
	`"license":{"key":"mit","name":"MIT License","spdx_id":"MIT"},"topics":["octocat","atom","electron","api"],"visibility":"public",` +
	`"default_branch":"master","pushed_at":"2011-01-26T19:06:43Z","created_at":"2011-01-26T19:01:12Z","updated_at":"2011-01-26T19:14:43Z",` +
	`"permissions":{"admin":false,"push":false,"pull":true}},` +
	`{"id":1300192,"node_id":"MDEwOlJlcG9zaXRvcnkxMzAwMTky","name":"Spoon-Knife","full_name":"octocat/Spoon-Knife","private":false,` +
	`"owner":{"login":"octocat","id":1,"node_id":"MDQ6VXNlcjE=","avatar_url":"https://github.com/images/error/octocat_happy.gif","type":"User","site_admin":false},` +
	`"html_url":"https://github.com/octocat/Spoon-Knife","description":"This repo is for demonstration purposes only.","fork":false,"url":"https://api.github.com/repos/octocat/Spoon-Knife",` +
	`"clone_url":"https://github.com/octocat/Spoon-Knife.git","homepage":"","size":2,"stargazers_count":12000,"watchers_count":12000,"language":"HTML",` +
	`"has_issues":true,"has_projects":true,"has_wiki":true,"has_pages":true,"forks_count":140000,"archived":false,"disabled":false,"open_issues_count":5000,` +
	`"license":null,"topics":[],"visibility":"public",` +
	`"default_branch":"main","pushed_at":"2024-02-26T19:06:43Z","created_at":"2011-01-27T19:30:43Z","updated_at":"2024-02-26T19:14:43Z",` +
	`"permissions":{"admin":false,"push":false,"pull":true}}]` + "\n"

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address (loopback only)")
	flag.Parse()
	b := []byte(body)
	clen := strconv.Itoa(len(b))
	mux := http.NewServeMux()
	mux.HandleFunc("/user/repos", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer bench-secret" {
			http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet {
			http.Error(w, `{"message":"method not allowed"}`, http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", clen)
		w.WriteHeader(http.StatusOK)
		w.Write(b)
	})
	srv := &http.Server{
		Addr:              *addr,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(discard{}, "", 0),
	}
	log.Fatal(srv.ListenAndServe())
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
