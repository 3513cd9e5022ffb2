// Package llm meters calls to model APIs (OpenAI chat completions and
// responses, Anthropic messages, Gemini generateContent) so that budgets
// can be kept in money and tokens.
//
// A route's `llm:` block compiles into a Policy. On the way up, Prepare
// checks the request's model against the allowlist, bounds every field
// that limits the answer's length (setting it when absent), asks OpenAI
// chat streams to end with their usage, estimates the input tokens and
// prices the worst case: what the gateway reserves before it dials. On
// the way down, a Meter reads the usage the provider reports, from a JSON
// body or an SSE stream, as the bytes pass: it never holds a stream back
// and keeps a few kilobytes at most. Request.Charge then turns the usage
// into what the exchange costs; a response that ends without its usage
// (client gone, upstream cut, no usage chunk) costs the reservation,
// never zero.
//
// Amounts are integer micro-dollars (config.Money), so sums are exact on
// every instance; a cost is rounded up to the next micro-dollar, once per
// exchange, so rounding never favours the caller. docs/LLM.md explains
// the estimate, the fields of each API and what cannot be metered.
package llm

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/keyward/keyward/internal/config"
)

// API is the wire format of a model API.
type API int

// The model APIs keyward meters. The zero API is not a valid one.
const (
	// OpenAIChat is POST /v1/chat/completions.
	OpenAIChat API = iota + 1
	// OpenAIResponses is POST /v1/responses.
	OpenAIResponses
	// AnthropicMessages is POST /v1/messages.
	AnthropicMessages
	// Gemini is models/MODEL:generateContent and :streamGenerateContent.
	Gemini
)

var apiNames = [...]string{
	OpenAIChat:        "openai-chat",
	OpenAIResponses:   "openai-responses",
	AnthropicMessages: "anthropic-messages",
	Gemini:            "gemini",
}

// String returns the configuration spelling of a.
func (a API) String() string {
	if a > 0 && int(a) < len(apiNames) {
		return apiNames[a]
	}
	return fmt.Sprintf("API(%d)", int(a))
}

// ParseAPI reads the configuration spelling of an API.
func ParseAPI(s string) (API, error) {
	for a, name := range apiNames {
		if a > 0 && name == s {
			return API(a), nil
		}
	}
	return 0, fmt.Errorf("unknown api %q: want openai-chat, openai-responses, anthropic-messages or gemini", s)
}

// Usage is what one response reports it used.
type Usage struct {
	// Model is the model the provider says answered, which may be a dated
	// version of the one requested ("gpt-4o-mini-2024-07-18"). It is
	// chosen by the upstream: price and label metrics by Request.Model.
	Model string
	// Input counts every input token, those read from or written to a
	// prompt cache included.
	Input int64
	// CachedInput is the part of Input read from the provider's prompt
	// cache (billed at the cached price).
	CachedInput int64
	// CacheWrite is the part of Input written to the provider's prompt
	// cache (Anthropic's cache_creation_input_tokens; billed at the
	// cache-write price).
	CacheWrite int64
	// Output counts every generated token, reasoning and thinking
	// included.
	Output int64
	// Complete reports that the response's final usage was seen. When it
	// is false the counts are what arrived before the response ended, if
	// anything, and Charge falls back to the reservation.
	Complete bool
}

// Tokens returns Input + Output, saturated: what a token budget counts.
func (u Usage) Tokens() int64 { return satAdd(u.Input, u.Output) }

// Amount is what an exchange reserves or costs against budgets.
type Amount struct {
	// Money is in micro-dollars.
	Money config.Money
	// Tokens counts input and output tokens together.
	Tokens int64
}

// Price is a model's compiled price, in micro-dollars per million tokens.
type Price struct {
	// Input is the price of input tokens neither read from nor written
	// to a prompt cache.
	Input int64
	// Output is the price of output tokens.
	Output int64
	// CachedInput is the price of input tokens read from the cache.
	CachedInput int64
	// CacheWrite is the price of input tokens written to the cache.
	CacheWrite int64
}

// Cost returns what u costs at p, in micro-dollars, rounded up: the
// exact sum of tokens × price per million, divided by a million once, so
// that a thousand one-token calls are not each rounded up to a whole
// micro-dollar of input plus one of output. A cache count larger than
// Input is capped at Input; a result beyond config.MaxMoney is capped
// there.
func (p Price) Cost(u Usage) config.Money {
	var s sum
	p.input(&s, u)
	s.add(max(u.Output, 0), p.Output)
	return s.micros()
}

// input adds the cost of u's input tokens, each kind at its price.
func (p Price) input(s *sum, u Usage) {
	in := max(u.Input, 0)
	cached := min(max(u.CachedInput, 0), in)
	write := min(max(u.CacheWrite, 0), in-cached)
	s.add(in-cached-write, p.Input)
	s.add(cached, p.CachedInput)
	s.add(write, p.CacheWrite)
}

// maxInput is the highest price an input token can have.
func (p Price) maxInput() int64 { return max(p.Input, p.CachedInput, p.CacheWrite) }

// sum is an unsigned 128-bit accumulator of tokens × micro-dollars per
// million tokens: a billion tokens at a billion dollars per million still
// fit, so no product or sum can wrap.
type sum struct{ hi, lo uint64 }

func (s *sum) add(tokens, pricePerMillion int64) {
	if tokens <= 0 || pricePerMillion <= 0 {
		return
	}
	hi, lo := bits.Mul64(uint64(tokens), uint64(pricePerMillion))
	var c uint64
	s.lo, c = bits.Add64(s.lo, lo, 0)
	s.hi += hi + c
}

// micros divides by a million, rounding up, and caps at MaxMoney.
func (s sum) micros() config.Money {
	const million = 1_000_000
	if s.hi >= million {
		return config.MaxMoney // the quotient would not fit in 64 bits
	}
	q, r := bits.Div64(s.hi, s.lo, million)
	if r != 0 {
		q++
	}
	if q > uint64(config.MaxMoney) {
		return config.MaxMoney
	}
	return config.Money(q)
}

func satAdd(a, b int64) int64 {
	if a > 0 && b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

func satMul(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}
