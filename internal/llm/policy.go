package llm

import (
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/keyward/keyward/internal/config"
)

// Error is one problem found while compiling a config.LLM block, its
// Path relative to the block (config.BlockError).
type Error = config.BlockError

// Errors is every problem found in one block, reported together.
type Errors = config.BlockErrors

// MaxTokensLimit is the largest max_tokens a config may set: far above
// any model's output window, low enough that a worst case in tokens
// times a price cannot overflow.
const MaxTokensLimit = 10_000_000

// minResponsesOutput is the smallest max_output_tokens the Responses API
// accepts (its OpenAPI description: minimum 16).
const minResponsesOutput = 16

// Policy is a route's compiled `llm:` block. It is immutable and safe for
// concurrent use.
type Policy struct {
	api       API
	maxTokens int64
	prices    map[string]Price // the allowlist: a model is allowed iff it has a price
}

// API returns the wire format the policy reads and writes.
func (p *Policy) API() API { return p.api }

// MaxTokens returns the configured bound on output tokens.
func (p *Policy) MaxTokens() int64 { return p.maxTokens }

// Price returns the compiled price of an allowed model.
func (p *Policy) Price(model string) (Price, bool) {
	pr, ok := p.prices[model]
	return pr, ok
}

// Models returns the allowed models, sorted.
func (p *Policy) Models() []string {
	ms := make([]string, 0, len(p.prices))
	for m := range p.prices {
		ms = append(ms, m)
	}
	slices.Sort(ms)
	return ms
}

// Compile checks a route's llm block and compiles it. Every problem is
// reported at once, as Errors with paths relative to the block. It reads
// no files and opens no sockets.
func Compile(c config.LLM) (*Policy, error) {
	var errs Errors
	p := &Policy{maxTokens: c.MaxTokens, prices: make(map[string]Price, len(c.Models))}
	switch api, err := ParseAPI(c.API); {
	case c.API == "":
		errs.Add("api", "required: openai-chat, openai-responses, anthropic-messages or gemini")
	case err != nil:
		errs.Add("api", "%v", err)
	default:
		p.api = api
	}
	switch {
	case c.MaxTokens <= 0:
		errs.Add("max_tokens", "required: a positive number of tokens, the longest answer a request may get")
	case c.MaxTokens > MaxTokensLimit:
		errs.Add("max_tokens", "%d is more than %d", c.MaxTokens, MaxTokensLimit)
	case p.api == OpenAIResponses && c.MaxTokens < minResponsesOutput:
		errs.Add("max_tokens", "%d is below %d, the smallest max_output_tokens the Responses API accepts", c.MaxTokens, minResponsesOutput)
	}
	if len(c.Models) == 0 {
		errs.Add("models", "required: list the models a request may use (each with a price)")
	}
	for i, m := range c.Models {
		path := fmt.Sprintf("models[%d]", i)
		switch {
		case m == "":
			errs.Add(path, "empty model name")
			continue
		case strings.IndexFunc(m, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
			errs.Add(path, "model %q contains white space or a control character", m)
			continue
		case p.api == Gemini && strings.ContainsAny(m, "/:"):
			errs.Add(path, "model %q: a Gemini model is one path segment, without \"models/\" or a method", m)
			continue
		case slices.Contains(c.Models[:i], m):
			errs.Add(path, "model %q is listed twice", m)
			continue
		}
		mp, ok := c.Prices[m]
		if !ok {
			errs.Add("prices", "model %q has no price: every allowed model needs { input: $X, output: $Y } per million tokens", m)
			continue
		}
		if pr, ok := compilePrice(&errs, "prices."+m, mp, p.api); ok {
			p.prices[m] = pr
		}
	}
	priced := make([]string, 0, len(c.Prices))
	for m := range c.Prices {
		priced = append(priced, m)
	}
	slices.Sort(priced)
	for _, m := range priced {
		if !slices.Contains(c.Models, m) {
			errs.Add("prices."+m, "price for %q, which is not in models", m)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return p, nil
}

func compilePrice(errs *Errors, path string, mp config.ModelPrice, api API) (Price, bool) {
	n := len(*errs)
	money := func(field, s string, required bool) int64 {
		if s == "" {
			if required {
				errs.Add(path+"."+field, "required: a price per million tokens, such as $0.15 ($0 for a free model)")
			}
			return -1
		}
		m, err := config.ParseMoney(s)
		if err != nil {
			errs.Add(path+"."+field, "%v", err)
			return -1
		}
		return int64(m)
	}
	pr := Price{
		Input:       money("input", mp.Input, true),
		Output:      money("output", mp.Output, true),
		CachedInput: money("cached_input", mp.CachedInput, false),
		CacheWrite:  money("cache_write", mp.CacheWrite, false),
	}
	if len(*errs) > n {
		return Price{}, false
	}
	if pr.CachedInput < 0 {
		pr.CachedInput = pr.Input
	}
	if pr.CacheWrite < 0 {
		pr.CacheWrite = pr.Input
		if api == AnthropicMessages {
			pr.CacheWrite = 2 * pr.Input
		}
	}
	return pr, true
}
