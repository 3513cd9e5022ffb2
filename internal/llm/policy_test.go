package llm

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyward/keyward/internal/config"
)

func TestCompileErrors(t *testing.T) {
	_, err := Compile(config.LLM{
		API:       "openai-chatt",
		Models:    []string{"gpt-4o-mini", "gpt-4o", "", "gpt 4", "gpt-4o-mini", "o3"},
		MaxTokens: 0,
		Prices: map[string]config.ModelPrice{
			"gpt-4o-mini": {Input: "$0.15", Output: "0.60"},
			"gpt-4o":      {Input: "$2.50", Output: "$10", CachedInput: "$1.2500001"},
			"o3":          {Output: "$8"},
			"gpt-4o-mni":  {Input: "$0.15", Output: "$0.60"},
		},
	})
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Compile error = %v, want Errors", err)
	}
	var got []string
	for _, e := range es {
		got = append(got, e.Path)
	}
	want := []string{
		"api", "max_tokens", "prices.gpt-4o-mini.output", "prices.gpt-4o.cached_input",
		"models[2]", "models[3]", "models[4]", "prices.o3.input", "prices.gpt-4o-mni",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("error paths (-want +got):\n%s\nerrors:\n%v", diff, err)
	}

	for _, tc := range []struct {
		name string
		c    config.LLM
		path string
	}{
		{"no api", config.LLM{Models: []string{"m"}, MaxTokens: 1, Prices: map[string]config.ModelPrice{"m": {Input: "$0", Output: "$0"}}}, "api"},
		{"no models", config.LLM{API: "gemini", MaxTokens: 1}, "models"},
		{"model without a price", config.LLM{API: "gemini", Models: []string{"m"}, MaxTokens: 1}, "prices"},
		{"gemini model with a method", config.LLM{API: "gemini", Models: []string{"m:generateContent"}, MaxTokens: 1}, "models[0]"},
		{"responses below its minimum", config.LLM{API: "openai-responses", Models: []string{"m"}, MaxTokens: 15,
			Prices: map[string]config.ModelPrice{"m": {Input: "$0", Output: "$0"}}}, "max_tokens"},
		{"max_tokens too large", config.LLM{API: "gemini", Models: []string{"m"}, MaxTokens: MaxTokensLimit + 1,
			Prices: map[string]config.ModelPrice{"m": {Input: "$0", Output: "$0"}}}, "max_tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.c)
			var es Errors
			if !errors.As(err, &es) || len(es) != 1 || es[0].Path != tc.path {
				t.Errorf("Compile error = %v, want one at %s", err, tc.path)
			}
		})
	}
}

func TestCompilePriceDefaults(t *testing.T) {
	prices := map[string]config.ModelPrice{
		"a": {Input: "$3", Output: "$15"},
		"b": {Input: "$3", Output: "$15", CachedInput: "$0.30", CacheWrite: "$3.75"},
	}
	for _, tc := range []struct {
		api     string
		a, b    Price
		allowed []string
	}{
		{"anthropic-messages", Price{Input: 3e6, Output: 15e6, CachedInput: 3e6, CacheWrite: 6e6}, Price{Input: 3e6, Output: 15e6, CachedInput: 3e5, CacheWrite: 375e4}, []string{"a", "b"}},
		{"openai-chat", Price{Input: 3e6, Output: 15e6, CachedInput: 3e6, CacheWrite: 3e6}, Price{Input: 3e6, Output: 15e6, CachedInput: 3e5, CacheWrite: 375e4}, []string{"a", "b"}},
	} {
		p := mustCompile(t, config.LLM{API: tc.api, Models: []string{"b", "a"}, MaxTokens: 100, Prices: prices})
		a, _ := p.Price("a")
		b, _ := p.Price("b")
		if a != tc.a || b != tc.b {
			t.Errorf("%s: prices %+v, %+v; want %+v, %+v", tc.api, a, b, tc.a, tc.b)
		}
		if diff := cmp.Diff(tc.allowed, p.Models()); diff != "" {
			t.Errorf("models (-want +got):\n%s", diff)
		}
	}
}

func TestCost(t *testing.T) {
	mini := Price{Input: 150_000, Output: 600_000, CachedInput: 75_000, CacheWrite: 150_000} // gpt-4o-mini: $0.15, $0.60, $0.075
	for _, tc := range []struct {
		name string
		p    Price
		u    Usage
		want config.Money
	}{
		{"nothing", mini, Usage{}, 0},
		{"one input token rounds up to a micro-dollar", mini, Usage{Input: 1}, 1},
		{"exact: a thousand input tokens", mini, Usage{Input: 1000}, 150},
		{"rounded once, not per kind", mini, Usage{Input: 3, Output: 1}, 2}, // 0.45 + 0.6 = 1.05 -> 2
		{"a million of each", mini, Usage{Input: 1e6, Output: 1e6}, 750_000},
		{"cached input at the cached price", mini, Usage{Input: 2000, CachedInput: 1000, Output: 100}, 150 + 75 + 60},
		{"cache larger than input is capped", mini, Usage{Input: 10, CachedInput: 100}, 1},
		{"cache writes at their price", Price{Input: 3e6, Output: 15e6, CachedInput: 3e5, CacheWrite: 6e6},
			Usage{Input: 3544, CachedInput: 1024, CacheWrite: 2048, Output: 15}, 1416 + 308 + 12288 + 225}, // 472*3 + 1024*0.3 (307.2) + 2048*6 + 15*15
		{"free model", Price{}, Usage{Input: 1e9, Output: 1e9}, 0},
		{"negative counts are nothing", mini, Usage{Input: -5, Output: -5}, 0},
		{"saturates", Price{Input: int64(config.MaxMoney), Output: int64(config.MaxMoney)}, Usage{Input: math.MaxInt64, Output: math.MaxInt64}, config.MaxMoney},
	} {
		if got := tc.p.Cost(tc.u); got != tc.want {
			t.Errorf("%s: Cost = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestReserveAndCharge(t *testing.T) {
	p := mustCompile(t, config.LLM{API: "openai-chat", Models: []string{"gpt-4o-mini"}, MaxTokens: 1000,
		Prices: map[string]config.ModelPrice{"gpt-4o-mini": {Input: "$0.15", Output: "$0.60", CachedInput: "$0.075"}}})
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`
	r, err := p.Prepare([]byte(body), "")
	if err != nil {
		t.Fatal(err)
	}
	in := EstimateInput(len(r.Body), false)
	wantRes := Amount{Money: config.Money((in*150_000 + 1000*600_000 + 999_999) / 1_000_000), Tokens: in + 1000}
	if got := r.Reserve(); got != wantRes {
		t.Fatalf("Reserve = %+v, want %+v", got, wantRes)
	}
	for _, tc := range []struct {
		name   string
		status int
		u      Usage
		want   Amount
	}{
		{"complete: the real cost", 200, Usage{Input: 20, Output: 10, Complete: true}, Amount{Money: 9, Tokens: 30}},
		{"complete, even over the reservation", 200, Usage{Input: 1e6, Output: 0, Complete: true}, Amount{Money: 150_000, Tokens: 1e6}},
		{"a cut stream: the reservation, never zero", 200, Usage{}, wantRes},
		{"a cut stream with partial counts below it", 200, Usage{Input: 20, Output: 3}, wantRes},
		{"partial input above the estimate: the input seen, the output at its bound", 200, Usage{Input: 1e6, CachedInput: 1e5, Output: 5},
			Amount{Money: 135_000 + 7_500 + 600, Tokens: 1e6 + 1000}},
		{"partial output above the bound (n answers)", 200, Usage{Input: 3, Output: 5000}, Amount{Money: wantRes.Money - 600 + 3000, Tokens: in + 5000}},
		{"refused upstream: nothing", 429, Usage{}, Amount{}},
		{"no status (sent, then a timeout): the reservation", 0, Usage{}, wantRes},
		{"refused upstream with usage reported", 400, Usage{Input: 20, Output: 0, Complete: true}, Amount{Money: 3, Tokens: 20}},
		{"refused but tokens seen: the reservation", 500, Usage{Input: 20}, wantRes},
	} {
		if got := r.Charge(tc.status, tc.u); got != tc.want {
			t.Errorf("%s: Charge = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestReserveCoversWorstCase: whatever the provider reports within the
// clamp and the estimate, the settled cost never exceeds the
// reservation, whatever mix of cached and cache-write tokens.
func TestReserveCoversWorstCase(t *testing.T) {
	p := mustCompile(t, config.LLM{API: "anthropic-messages", Models: []string{"c"}, MaxTokens: 700,
		Prices: map[string]config.ModelPrice{"c": {Input: "$3", Output: "$15", CachedInput: "$0.30"}}})
	r, err := p.Prepare([]byte(`{"model":"c","max_tokens":9999,"messages":[{"role":"user","content":"hi"}]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	res := r.Reserve()
	for in := int64(0); in <= r.InputTokens; in += 7 {
		for _, split := range [][2]int64{{0, 0}, {in, 0}, {0, in}, {in / 2, in / 2}} {
			u := Usage{Input: in, CachedInput: split[0], CacheWrite: split[1], Output: r.OutputTokens, Complete: true}
			if c := r.Charge(200, u); c.Money > res.Money || c.Tokens > res.Tokens {
				t.Fatalf("usage %+v costs %+v, more than the reservation %+v", u, c, res)
			}
		}
	}
}
