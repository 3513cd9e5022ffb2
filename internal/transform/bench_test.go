package transform

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/keyward/keyward/internal/config"
)

// repos returns a GitHub-like repository list of about size bytes.
func repos(size int) []byte {
	var list []map[string]any
	for i := 0; ; i++ {
		list = append(list, map[string]any{
			"id": 100000 + i, "name": fmt.Sprintf("repo-%d", i), "full_name": fmt.Sprintf("keyward/repo-%d", i),
			"private": false, "html_url": fmt.Sprintf("https://github.com/keyward/repo-%d", i),
			"description": strings.Repeat("a useful library ", 8), "fork": false,
			"stargazers_count": i * 7, "watchers_count": i * 3, "language": "Go",
			"topics": []string{"api", "gateway", "go"}, "default_branch": "main",
			"owner": map[string]any{"login": "keyward", "id": 42, "type": "Organization"},
		})
		b, _ := json.Marshal(list)
		if len(b) >= size {
			return b
		}
	}
}

// BenchmarkResponse measures the README's response transform (trim a repo
// list to {name, url, stars}) end to end: decode, evaluate, guard, encode.
func BenchmarkResponse(b *testing.B) {
	tr, err := Compile(config.Transform{Response: `[.[] | {name, url: .html_url, stars: .stargazers_count}]`})
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{2 << 10, 200 << 10} {
		body := repos(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tr.Response.Run(context.Background(), body, "application/json", Vars{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
