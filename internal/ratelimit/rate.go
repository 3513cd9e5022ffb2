package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/config"
)

// Rate is a sustained request rate: Count requests per Per. It is written
// "60/m", "100/s", "10/1s", "1000/h" or "5/10m".
type Rate struct {
	// Count is the number of requests allowed per Per; always positive in a
	// parsed Rate.
	Count int64
	// Per is the period Count applies to.
	Per time.Duration
}

// IsZero reports whether r is the zero Rate, which means "no rate limit".
func (r Rate) IsZero() bool { return r == Rate{} }

// Emission returns the time one request costs at this rate (the GCRA
// emission interval), truncated to a whole microsecond because that is the
// unit every Store computes in.
func (r Rate) Emission() time.Duration {
	if r.Count <= 0 {
		return 0
	}
	return (r.Per / time.Duration(r.Count)).Truncate(time.Microsecond)
}

// String returns r in the form ParseRate reads, for error messages and
// configuration dumps.
func (r Rate) String() string {
	unit := "s"
	per := r.Per
	switch {
	case per%(24*time.Hour) == 0:
		unit, per = "d", per/(24*time.Hour)
	case per%time.Hour == 0:
		unit, per = "h", per/time.Hour
	case per%time.Minute == 0:
		unit, per = "m", per/time.Minute
	default:
		if per%time.Second != 0 {
			return strconv.FormatInt(r.Count, 10) + "/" + r.Per.String()
		}
		per /= time.Second
	}
	n := ""
	if per != 1 {
		n = strconv.FormatInt(int64(per), 10)
	}
	return strconv.FormatInt(r.Count, 10) + "/" + n + unit
}

// rateUnits maps the unit spellings a rate's period may use.
var rateUnits = map[string]time.Duration{
	"s": time.Second, "sec": time.Second, "second": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute,
	"h": time.Hour, "hour": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour,
}

// ParseRate parses a rate written COUNT/[N]UNIT, where UNIT is s, m, h or d
// (or second, minute, hour, day) and N an optional positive multiplier:
// "60/m", "100/s", "10/1s", "5/10m". The error names the part that is wrong.
//
// Rates faster than one request per microsecond are rejected, because the
// stores keep time in microseconds and such a rate would round to "no
// limit".
func ParseRate(s string) (Rate, error) {
	countStr, perStr, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want COUNT/PERIOD, for example 60/m or 5/10s", s)
	}
	count, err := strconv.ParseInt(strings.TrimSpace(countStr), 10, 64)
	if err != nil || count <= 0 {
		return Rate{}, fmt.Errorf("rate %q: count %q is not a positive integer", s, countStr)
	}
	perStr = strings.TrimSpace(perStr)
	i := 0
	for i < len(perStr) && '0' <= perStr[i] && perStr[i] <= '9' {
		i++
	}
	mult := int64(1)
	if i > 0 {
		mult, err = strconv.ParseInt(perStr[:i], 10, 64)
		if err != nil || mult <= 0 || mult > 1<<20 {
			return Rate{}, fmt.Errorf("rate %q: period multiplier %q is not a positive integer up to %d", s, perStr[:i], 1<<20)
		}
	}
	unit, ok := rateUnits[strings.ToLower(perStr[i:])]
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: unknown period unit %q: want s, m, h or d", s, perStr[i:])
	}
	r := Rate{Count: count, Per: time.Duration(mult) * unit}
	if r.Emission() < time.Microsecond {
		return Rate{}, fmt.Errorf("rate %q: more than one request per microsecond is not supported", s)
	}
	return r, nil
}

// Window is a fixed calendar window, in UTC, that a Budget counts in. Fixed
// windows are used for budgets, not sliding ones, because they match how
// upstream providers bill (per day, per month) and because a counter per
// window is one atomic increment in any store.
type Window int

// The windows a Budget can count in. The zero Window means "no budget".
const (
	Minute Window = iota + 1
	Hour
	Day
	Month
)

// String returns the configuration spelling of w.
func (w Window) String() string {
	switch w {
	case Minute:
		return "minute"
	case Hour:
		return "hour"
	case Day:
		return "day"
	case Month:
		return "month"
	}
	return "Window(" + strconv.Itoa(int(w)) + ")"
}

// Start returns the start of the window containing t, in UTC.
func (w Window) Start(t time.Time) time.Time {
	t = t.UTC()
	switch w {
	case Minute:
		return t.Truncate(time.Minute)
	case Hour:
		return t.Truncate(time.Hour)
	case Day:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	case Month:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	return t
}

// End returns the end (exclusive) of the window containing t, in UTC.
func (w Window) End(t time.Time) time.Time {
	s := w.Start(t)
	switch w {
	case Minute:
		return s.Add(time.Minute)
	case Hour:
		return s.Add(time.Hour)
	case Day:
		return s.AddDate(0, 0, 1)
	case Month:
		return s.AddDate(0, 1, 0)
	}
	return s
}

// nominal returns the length of w, a month counted as 30 days, for the
// RateLimit-Policy w= parameter, which has no notion of calendar months.
func (w Window) nominal() time.Duration {
	switch w {
	case Minute:
		return time.Minute
	case Hour:
		return time.Hour
	case Day:
		return 24 * time.Hour
	case Month:
		return 30 * 24 * time.Hour
	}
	return 0
}

// Unit is what a Budget counts.
type Unit uint8

// The units a Budget can count in. The zero Unit counts requests, so a
// Budget written before budgets had units still means what it meant.
const (
	// Requests counts upstream calls, one per call.
	Requests Unit = iota
	// Money counts micro-dollars (config.Money): what each call costs, a
	// route's price or a model call's tokens at the model's prices.
	Money
	// Tokens counts a model call's input and output tokens together.
	Tokens
)

// String returns the unit's name, as the RateLimit-Policy "qu" parameter
// would spell it: "requests", "usd-micros" or "tokens".
func (u Unit) String() string {
	switch u {
	case Requests:
		return "requests"
	case Money:
		return "usd-micros"
	case Tokens:
		return "tokens"
	}
	return "Unit(" + strconv.Itoa(int(u)) + ")"
}

// Budget is a hard ceiling per fixed calendar window on what a route's
// upstream calls may count in Unit: Limit requests, micro-dollars or
// tokens per Window, written "10000/day", "$20/day" or, for tokens (see
// ParseTokens), "100000/day". A budget bounds what a route can spend
// upstream.
type Budget struct {
	// Limit is how much the calls of one window may count, in Unit;
	// positive in a parsed Budget.
	Limit int64
	// Window is the calendar window the count resets at.
	Window Window
	// Unit is what the budget counts; the zero Unit counts requests.
	Unit Unit
}

// IsZero reports whether b is the zero Budget, which means "no budget".
func (b Budget) IsZero() bool { return b == Budget{} }

// String returns b in the form ParseBudget (or, for tokens, ParseTokens)
// reads.
func (b Budget) String() string {
	limit := strconv.FormatInt(b.Limit, 10)
	if b.Unit == Money {
		limit = config.Money(b.Limit).String()
	}
	return limit + "/" + b.Window.String()
}

var budgetWindows = map[string]Window{
	"m": Minute, "min": Minute, "minute": Minute,
	"h": Hour, "hour": Hour,
	"d": Day, "day": Day,
	"mo": Month, "month": Month,
}

// ParseBudget parses a budget written LIMIT/WINDOW, where WINDOW is minute,
// hour, day or month (or m, h, d, mo) and LIMIT a number of requests
// ("10000/day", "1000/h") or an amount of money ("$20/day", "$0.10/day";
// see config.ParseMoney). Multipliers such as "/2d" are rejected because
// windows are calendar-aligned, and the error names the part that is
// wrong.
func ParseBudget(s string) (Budget, error) {
	limitStr, w, err := cutBudget(s, "10000/day or $20/day")
	if err != nil {
		return Budget{}, err
	}
	if strings.HasPrefix(limitStr, "$") {
		m, err := config.ParseMoney(limitStr)
		if err != nil {
			return Budget{}, fmt.Errorf("budget %q: %w", s, err)
		}
		if m <= 0 {
			return Budget{}, fmt.Errorf("budget %q: limit %q is not a positive amount", s, limitStr)
		}
		return Budget{Limit: int64(m), Window: w, Unit: Money}, nil
	}
	limit, err := strconv.ParseInt(limitStr, 10, 64)
	if err != nil || limit <= 0 {
		return Budget{}, fmt.Errorf("budget %q: limit %q is not a positive integer or a dollar amount", s, limitStr)
	}
	return Budget{Limit: limit, Window: w}, nil
}

// ParseTokens parses a token budget (the `tokens:` setting) written
// LIMIT/WINDOW: "100000/day", "2000000/month".
func ParseTokens(s string) (Budget, error) {
	limitStr, w, err := cutBudget(s, "100000/day")
	if err != nil {
		return Budget{}, err
	}
	limit, err := strconv.ParseInt(limitStr, 10, 64)
	if err != nil || limit <= 0 {
		return Budget{}, fmt.Errorf("tokens %q: limit %q is not a positive integer (tokens per window)", s, limitStr)
	}
	return Budget{Limit: limit, Window: w, Unit: Tokens}, nil
}

// cutBudget splits LIMIT/WINDOW and parses the window.
func cutBudget(s, example string) (string, Window, error) {
	limitStr, windowStr, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return "", 0, fmt.Errorf("budget %q: want LIMIT/WINDOW, for example %s", s, example)
	}
	windowStr = strings.TrimSpace(windowStr)
	w, ok := budgetWindows[strings.ToLower(windowStr)]
	if !ok {
		return "", 0, fmt.Errorf("budget %q: unknown window %q: want minute, hour, day or month (calendar windows in UTC)", s, windowStr)
	}
	return strings.TrimSpace(limitStr), w, nil
}
