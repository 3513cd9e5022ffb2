// Package metrics defines keyward's Prometheus metrics on a registry of its
// own, so tests and several gateways in one process never collide. Labels
// carry route names, methods and status codes: never paths, query values
// or anything a client chose freely, which would leak data and explode
// cardinality.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the collectors. Its methods are safe on a nil receiver, so
// code paths without metrics need no checks.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	upstream  *prometheus.HistogramVec
	upErrors  *prometheus.CounterVec
	reloads   *prometheus.CounterVec
	configAge prometheus.Gauge
	limited   *prometheus.CounterVec
	budget    *prometheus.GaugeVec
	storeErrs *prometheus.CounterVec
	authFails *prometheus.CounterVec
	spend     *prometheus.CounterVec
	tokens    *prometheus.CounterVec
	connOnce  sync.Once                  // registers the connection collectors (connections.go)
	conns     atomic.Pointer[connSource] // what they read
}

// New registers every collector on a fresh registry.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_requests_total", Help: "Requests answered, by route, method and status.",
	}, []string{"route", "method", "status"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "keyward_request_duration_seconds", Help: "Time from request to the end of the response, by route.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	m.upstream = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "keyward_upstream_duration_seconds", Help: "Time until the upstream's response headers, by route.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	m.upErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_upstream_errors_total", Help: "Failed upstream exchanges, by route and kind.",
	}, []string{"route", "kind"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_config_reloads_total", Help: "Config reloads, by result (ok or failed).",
	}, []string{"result"})
	m.configAge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keyward_config_last_reload_success_timestamp_seconds", Help: "When the serving config was loaded.",
	})
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_limited_total", Help: "Requests refused by limits, by route and reason (rate, client_budget, budget, store_error).",
	}, []string{"route", "reason"})
	m.budget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keyward_budget_remaining", Help: "What is left in the route's current budget window, by unit: requests, dollars or tokens.",
	}, []string{"route", "unit"})
	m.storeErrs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_store_errors_total", Help: "Failed store (Redis) calls, by user (ratelimit, cache).",
	}, []string{"kind"})
	m.authFails = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_auth_failures_total", Help: "Requests refused because they proved no accepted caller, by route, caller kinds and reason (missing, malformed, expired, bad_signature, ...).",
	}, []string{"route", "kind", "reason"})
	m.spend = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_spend_dollars_total", Help: "What upstream calls cost, in US dollars, by route and model (\"\" on priced routes).",
	}, []string{"route", "model"})
	m.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_tokens_total", Help: "Tokens model APIs reported, by route, model and kind (input, cached_input, cache_write, output).",
	}, []string{"route", "model", "kind"})
	m.reg.MustRegister(m.requests, m.duration, m.upstream, m.upErrors, m.reloads, m.configAge, m.limited, m.budget, m.storeErrs, m.authFails,
		m.spend, m.tokens,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Request records one answered request. route is "" for unmatched paths.
func (m *Metrics) Request(route, method string, status int, dur, upstream time.Duration) {
	if m == nil {
		return
	}
	if route == "" {
		route = "(none)"
	}
	m.requests.WithLabelValues(route, methodLabel(method), statusLabel(status)).Inc()
	m.duration.WithLabelValues(route).Observe(dur.Seconds())
	if upstream > 0 {
		m.upstream.WithLabelValues(route).Observe(upstream.Seconds())
	}
}

// UpstreamError records a failed upstream exchange of a kind (the error
// code the client got, e.g. "upstream_timeout").
func (m *Metrics) UpstreamError(route, kind string) {
	if m == nil {
		return
	}
	m.upErrors.WithLabelValues(route, kind).Inc()
}

// Reload records a config reload.
func (m *Metrics) Reload(ok bool, at time.Time) {
	if m == nil {
		return
	}
	if ok {
		m.reloads.WithLabelValues("ok").Inc()
		m.configAge.Set(float64(at.Unix()))
		return
	}
	m.reloads.WithLabelValues("failed").Inc()
}

// AuthFailure records a request refused because it proved no caller the
// route accepts; reason is one of the caller package's fixed reasons.
func (m *Metrics) AuthFailure(route, kind, reason string) {
	if m == nil {
		return
	}
	m.authFails.WithLabelValues(route, kind, reason).Inc()
}

// Spend records what an upstream call cost, in dollars.
func (m *Metrics) Spend(route, model string, dollars float64) {
	if m == nil {
		return
	}
	m.spend.WithLabelValues(route, model).Add(dollars)
}

// Tokens records the tokens a model API reported for one call.
func (m *Metrics) Tokens(route, model string, input, cachedInput, cacheWrite, output int64) {
	if m == nil {
		return
	}
	for kind, n := range map[string]int64{"input": input, "cached_input": cachedInput, "cache_write": cacheWrite, "output": output} {
		if n > 0 {
			m.tokens.WithLabelValues(route, model, kind).Add(float64(n))
		}
	}
}

// Limited records a request refused by a limit.
func (m *Metrics) Limited(route, reason string) {
	if m == nil {
		return
	}
	m.limited.WithLabelValues(route, reason).Inc()
}

// BudgetRemaining records what is left of a route's budget.
func (m *Metrics) BudgetRemaining(route, unit string, n float64) {
	if m == nil {
		return
	}
	m.budget.WithLabelValues(route, unit).Set(n)
}

// StoreError records a failed store call.
func (m *Metrics) StoreError(kind string) {
	if m == nil {
		return
	}
	m.storeErrs.WithLabelValues(kind).Inc()
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// methodLabel keeps the label set bounded: a client can send any method.
// statusLabels are the label values of the statuses a response can have,
// made once: strconv.Itoa allocates for every number above 99.
var statusLabels = func() (t [600]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

func statusLabel(s int) string {
	if s >= 0 && s < len(statusLabels) {
		return statusLabels[s]
	}
	return strconv.Itoa(s)
}

func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
		return m
	}
	return "OTHER"
}
