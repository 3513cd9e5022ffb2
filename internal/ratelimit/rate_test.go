package ratelimit

import (
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in       string
		want     Rate
		wantStr  string
		emission time.Duration
		wantErr  string
	}{
		{in: "60/m", want: Rate{60, time.Minute}, wantStr: "60/m", emission: time.Second},
		{in: "100/s", want: Rate{100, time.Second}, wantStr: "100/s", emission: 10 * time.Millisecond},
		{in: "10/1s", want: Rate{10, time.Second}, wantStr: "10/s", emission: 100 * time.Millisecond},
		{in: "1000/h", want: Rate{1000, time.Hour}, wantStr: "1000/h", emission: 3600 * time.Millisecond},
		{in: "5/10m", want: Rate{5, 10 * time.Minute}, wantStr: "5/10m", emission: 2 * time.Minute},
		{in: " 7 / second ", want: Rate{7, time.Second}, wantStr: "7/s", emission: 142857 * time.Microsecond},
		{in: "2/d", want: Rate{2, 24 * time.Hour}, wantStr: "2/d", emission: 12 * time.Hour},
		{in: "3/90s", want: Rate{3, 90 * time.Second}, wantStr: "3/90s", emission: 30 * time.Second},
		{in: "60", wantErr: "want COUNT/PERIOD"},
		{in: "0/s", wantErr: `count "0" is not a positive integer`},
		{in: "-1/s", wantErr: `count "-1"`},
		{in: "x/s", wantErr: `count "x"`},
		{in: "10/", wantErr: `unknown period unit ""`},
		{in: "10/w", wantErr: `unknown period unit "w"`},
		{in: "10/0s", wantErr: `period multiplier "0"`},
		{in: "10/1.5s", wantErr: `unknown period unit ".5s"`},
		{in: "2000000/s", wantErr: "more than one request per microsecond"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRate(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || got.String() != tt.wantStr || got.Emission() != tt.emission {
				t.Errorf("ParseRate(%q) = %+v (%s, emission %v), want %+v (%s, emission %v)",
					tt.in, got, got, got.Emission(), tt.want, tt.wantStr, tt.emission)
			}
		})
	}
}

func TestParseBudget(t *testing.T) {
	tests := []struct {
		in      string
		want    Budget
		wantErr string
	}{
		{in: "10000/day", want: Budget{10000, Day, Requests}},
		{in: "1000/h", want: Budget{1000, Hour, Requests}},
		{in: "50/m", want: Budget{50, Minute, Requests}},
		{in: "100000/month", want: Budget{100000, Month, Requests}},
		{in: "5/Minute", want: Budget{5, Minute, Requests}},
		{in: "5/mo", want: Budget{5, Month, Requests}},
		{in: "$20/day", want: Budget{20_000_000, Day, Money}},
		{in: " $0.10 / day", want: Budget{100_000, Day, Money}},
		{in: "$0.000001/m", want: Budget{1, Minute, Money}},
		{in: "$1000000000/month", want: Budget{1_000_000_000_000_000, Month, Money}},
		{in: "$0/day", wantErr: `limit "$0" is not a positive amount`},
		{in: "$0.0000001/day", wantErr: "more than six decimals"},
		{in: "$-1/day", wantErr: "want $ followed by digits"},
		{in: "20$/day", wantErr: `limit "20$" is not a positive integer or a dollar amount`},
		{in: "10000", wantErr: "want LIMIT/WINDOW"},
		{in: "0/day", wantErr: `limit "0" is not a positive integer`},
		{in: "ten/day", wantErr: `limit "ten"`},
		{in: "10/2d", wantErr: `unknown window "2d"`},
		{in: "10/s", wantErr: `unknown window "s"`},
		{in: "10/week", wantErr: `unknown window "week"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBudget(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseBudget(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ParseBudget(%q) = %v, want %v", tt.in, got, tt.want)
			}
			if back, err := ParseBudget(got.String()); err != nil || back != got {
				t.Errorf("ParseBudget(%q) = %v, %v; want it to round-trip", got.String(), back, err)
			}
		})
	}
}

func TestParseTokens(t *testing.T) {
	tests := []struct {
		in      string
		want    Budget
		wantErr string
	}{
		{in: "100000/day", want: Budget{100_000, Day, Tokens}},
		{in: "2000000/month", want: Budget{2_000_000, Month, Tokens}},
		{in: "$5/day", wantErr: `limit "$5" is not a positive integer (tokens per window)`},
		{in: "0/day", wantErr: `limit "0" is not a positive integer`},
		{in: "5/week", wantErr: `unknown window "week"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTokens(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseTokens(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseTokens(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if back, err := ParseTokens(got.String()); err != nil || back != got {
				t.Errorf("ParseTokens(%q) = %v, %v; want it to round-trip", got.String(), back, err)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	tests := []struct {
		name       string
		w          Window
		at         time.Time
		start, end time.Time
	}{
		{name: "minute", w: Minute, at: time.Date(2026, 3, 14, 12, 34, 56, 7, time.UTC),
			start: time.Date(2026, 3, 14, 12, 34, 0, 0, time.UTC), end: time.Date(2026, 3, 14, 12, 35, 0, 0, time.UTC)},
		{name: "hour", w: Hour, at: time.Date(2026, 3, 14, 23, 59, 59, 0, time.UTC),
			start: time.Date(2026, 3, 14, 23, 0, 0, 0, time.UTC), end: time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)},
		{name: "day is a UTC day", w: Day, at: time.Date(2026, 3, 15, 0, 30, 0, 0, berlin),
			start: time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC), end: time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)},
		{name: "month", w: Month, at: time.Date(2026, 2, 28, 23, 59, 59, 0, time.UTC),
			start: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), end: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{name: "leap February", w: Month, at: time.Date(2028, 2, 29, 12, 0, 0, 0, time.UTC),
			start: time.Date(2028, 2, 1, 0, 0, 0, 0, time.UTC), end: time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC)},
		{name: "December", w: Month, at: time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC),
			start: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), end: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.w.Start(tt.at); !got.Equal(tt.start) {
				t.Errorf("Start = %v, want %v", got, tt.start)
			}
			if got := tt.w.End(tt.at); !got.Equal(tt.end) {
				t.Errorf("End = %v, want %v", got, tt.end)
			}
		})
	}
}
