package config

import (
	"fmt"
	"strconv"
	"strings"
)

// LLM is a route's `llm:` block: the upstream is a model API, so keyward
// checks the model, bounds the answer's length, and reads the tokens it
// used from the response (streams included) to charge budgets in money.
// llm.Compile turns it into the policy the request path uses.
//
//	llm:
//	  api: openai-chat
//	  models: [gpt-4o-mini]
//	  max_tokens: 512
//	  prices:
//	    gpt-4o-mini: { input: $0.15, output: $0.60, cached_input: $0.075 }
type LLM struct {
	// API is the upstream's wire format: "openai-chat" (POST
	// /v1/chat/completions), "openai-responses" (POST /v1/responses),
	// "anthropic-messages" (POST /v1/messages) or "gemini"
	// (models/MODEL:generateContent and :streamGenerateContent, the model
	// named in the upstream path). Required.
	API string `yaml:"api"`
	// Models lists the models a request may name, exactly as the API
	// spells them; any other model is refused with 400 model_not_allowed
	// before the upstream is called. Required: each needs a price.
	Models []string `yaml:"models"`
	// MaxTokens bounds the tokens one answer may generate (reasoning and
	// thinking included): every field of the API that limits output is
	// set to it when absent and lowered to it when higher, never raised.
	// It is also the output side of the worst case reserved against
	// budgets. Required, positive (at least 16 for openai-responses, the
	// API's own minimum).
	MaxTokens int64 `yaml:"max_tokens"`
	// Prices maps each model in Models to its price per million tokens.
	// Every allowed model needs one; a price for a model not in Models is
	// an error (a typo would otherwise go unnoticed).
	Prices map[string]ModelPrice `yaml:"prices"`
}

// ModelPrice is what a model costs per million tokens, in dollars written
// as money ("$0.15"): see ParseMoney.
type ModelPrice struct {
	// Input is the price of a million input (prompt) tokens. Required;
	// "$0" is allowed for a model that costs nothing.
	Input string `yaml:"input"`
	// Output is the price of a million output tokens, reasoning and
	// thinking tokens included. Required.
	Output string `yaml:"output"`
	// CachedInput is the price of a million input tokens the provider
	// read from its prompt cache. Default: the input price (never less
	// than the provider charges).
	CachedInput string `yaml:"cached_input"`
	// CacheWrite is the price of a million input tokens written to the
	// provider's prompt cache (Anthropic's cache_creation_input_tokens).
	// Default: twice the input price for anthropic-messages (the rate of
	// Anthropic's 1-hour cache, the highest it charges, because the client
	// chooses the cache's lifetime), the input price otherwise.
	CacheWrite string `yaml:"cache_write"`
}

// Money is an amount of US dollars in whole micro-dollars (millionths of
// a dollar). Integers keep sums exact across requests and instances: a
// float would drift, and $0.000001 is finer than any provider bills.
type Money int64

// MicrosPerDollar is the number of Money units in one dollar.
const MicrosPerDollar = 1_000_000

// MaxMoney is the largest amount ParseMoney accepts, a billion dollars:
// far above any budget, and far enough below the int64 limit that sums
// of many amounts cannot overflow.
const MaxMoney Money = 1_000_000_000 * MicrosPerDollar

// ParseMoney parses a dollar amount written "$D" or "$D.F", with at most
// six decimals (micro-dollars): "$0.005", "$20", "$0.15". The "$" is
// required, because a budget written "20/day" counts requests and
// "$20/day" counts money. Negative amounts, thousands separators,
// exponents and amounts above MaxMoney are refused, each with an error
// that names the rule.
func ParseMoney(s string) (Money, error) {
	t := strings.TrimSpace(s)
	digits, ok := strings.CutPrefix(t, "$")
	if !ok {
		return 0, fmt.Errorf("money %q: want a dollar amount such as $0.005 or $20", s)
	}
	whole, frac, hasFrac := strings.Cut(digits, ".")
	if whole == "" || !allDigits(whole) || (hasFrac && (frac == "" || !allDigits(frac))) {
		return 0, fmt.Errorf("money %q: want $ followed by digits, with an optional decimal part, such as $0.005", s)
	}
	frac = strings.TrimRight(frac, "0")
	if len(frac) > 6 {
		return 0, fmt.Errorf("money %q: more than six decimals (amounts are kept in whole micro-dollars)", s)
	}
	whole = strings.TrimLeft(whole, "0")
	if len(whole) > 10 {
		return 0, fmt.Errorf("money %q: more than %s", s, MaxMoney)
	}
	w, _ := strconv.ParseInt("0"+whole, 10, 64)
	f, _ := strconv.ParseInt(frac+strings.Repeat("0", 6-len(frac)), 10, 64)
	m := Money(w*MicrosPerDollar + f)
	if m > MaxMoney {
		return 0, fmt.Errorf("money %q: more than %s", s, MaxMoney)
	}
	return m, nil
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String returns m as ParseMoney reads it, with no trailing zeros:
// "$0.005", "$20", "$0.15".
func (m Money) String() string {
	sign := ""
	u := uint64(m)
	if m < 0 {
		sign, u = "-", uint64(-m) // -MinInt64 wraps to itself, which uint64 reads right
	}
	s := sign + "$" + strconv.FormatUint(u/MicrosPerDollar, 10)
	if f := u % MicrosPerDollar; f != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%06d", f), "0")
	}
	return s
}
