package metrics

import "github.com/prometheus/client_golang/prometheus"

// Connections is the public listener as the connection collectors read it
// (listener.Listener implements it).
type Connections interface {
	// Open reports the client connections open.
	Open() int
	// Waiting reports the connections waiting for a slot because
	// server.max_connections are open.
	Waiting() int
	// Reclaimed reports how many idle keep-alive connections were closed
	// to admit waiting ones or to meet a lowered limit.
	Reclaimed() uint64
}

type connSource struct{ Connections }

// ObserveConnections makes the connection collectors read c, from now on:
// keyward_connections_open, keyward_connections_waiting (above zero, the
// table is full and new clients wait: /readyz says so too) and
// keyward_connections_reclaimed_total. They are registered at the first
// call, and read zero until then. A later call (a new listener) replaces
// c.
func (m *Metrics) ObserveConnections(c Connections) {
	if m == nil {
		return
	}
	m.conns.Store(&connSource{c})
	m.connOnce.Do(func() {
		read := func(f func(Connections) float64) func() float64 {
			return func() float64 {
				if s := m.conns.Load(); s != nil {
					return f(s.Connections)
				}
				return 0
			}
		}
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "keyward_connections_open", Help: "Client connections open on the public listener.",
			}, read(func(c Connections) float64 { return float64(c.Open()) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "keyward_connections_waiting", Help: "Client connections waiting for a slot: server.max_connections are open.",
			}, read(func(c Connections) float64 { return float64(c.Waiting()) })),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "keyward_connections_reclaimed_total", Help: "Idle keep-alive connections closed to admit waiting ones or to meet a lowered server.max_connections.",
			}, read(func(c Connections) float64 { return float64(c.Reclaimed()) })),
		)
	})
}
