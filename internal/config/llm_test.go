package config

import (
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/google/go-cmp/cmp"
)

func TestParseMoney(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Money
		err  string
	}{
		{in: "$0.005", want: 5000},
		{in: "$0.15", want: 150_000},
		{in: "$20", want: 20_000_000},
		{in: "$0", want: 0},
		{in: " $1.50 ", want: 1_500_000},
		{in: "$0.000001", want: 1},
		{in: "$0.0000010", want: 1},
		{in: "$007.25", want: 7_250_000},
		{in: "$1000000000", want: MaxMoney},
		{in: "0.15", err: "want a dollar amount"},
		{in: "15", err: "want a dollar amount"},
		{in: "$", err: "want $ followed by digits"},
		{in: "$.5", err: "want $ followed by digits"},
		{in: "$5.", err: "want $ followed by digits"},
		{in: "$-1", err: "want $ followed by digits"},
		{in: "-$1", err: "want a dollar amount"},
		{in: "$1,000", err: "want $ followed by digits"},
		{in: "$1e3", err: "want $ followed by digits"},
		{in: "$ 5", err: "want $ followed by digits"},
		{in: "$0.0000001", err: "more than six decimals"},
		{in: "$1000000000.000001", err: "more than $1000000000"},
		{in: "$99999999999999999999", err: "more than $1000000000"},
		{in: "$20/day", err: "want $ followed by digits"},
	} {
		got, err := ParseMoney(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseMoney(%q): %v", tc.in, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseMoney(%q) error = %v, want one containing %q", tc.in, err, tc.err)
		case got != tc.want:
			t.Errorf("ParseMoney(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestMoneyString(t *testing.T) {
	for _, tc := range []struct {
		m    Money
		want string
	}{
		{0, "$0"}, {1, "$0.000001"}, {5000, "$0.005"}, {150_000, "$0.15"}, {20_000_000, "$20"},
		{1_500_000, "$1.5"}, {-2_500_000, "-$2.5"}, {MaxMoney, "$1000000000"},
	} {
		if got := tc.m.String(); got != tc.want {
			t.Errorf("Money(%d).String() = %q, want %q", tc.m, got, tc.want)
		}
		if tc.m >= 0 {
			if back, err := ParseMoney(tc.want); err != nil || back != tc.m {
				t.Errorf("ParseMoney(%q) = %d, %v; want %d", tc.want, back, err, tc.m)
			}
		}
	}
}

// TestLLMDecodes: an llm block as the contract writes it decodes into
// the structs (money stays a string until compiled).
func TestLLMDecodes(t *testing.T) {
	src := `
api: openai-chat
models: [gpt-4o-mini]
max_tokens: 512
prices: { gpt-4o-mini: { input: $0.15, output: $0.60, cached_input: $0.075 } }
`
	var got LLM
	if err := yaml.Unmarshal([]byte(src), &got); err != nil {
		t.Fatal(err)
	}
	want := LLM{API: "openai-chat", Models: []string{"gpt-4o-mini"}, MaxTokens: 512,
		Prices: map[string]ModelPrice{"gpt-4o-mini": {Input: "$0.15", Output: "$0.60", CachedInput: "$0.075"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}
}
