package natsstore

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	conflicts   prometheus.Counter
	reaped      prometheus.Counter
	deadNodes   prometheus.Counter
	unavailable prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	const ns, sub = "rendezvous", "nats"
	m := &metrics{
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "write_conflicts_total", Help: "Compare-and-set writes retried because the record changed since it was read."}),
		reaped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "reaped_peers_total", Help: "Peers of dead nodes removed by this node."}),
		deadNodes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "dead_nodes_total", Help: "Nodes whose heartbeat expired and that this node reaped."}),
		unavailable: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "unavailable_total", Help: "Store operations that failed because NATS could not be reached in time."}),
	}
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "connected", Help: "1 while the connection to NATS is up."}, func() float64 {
		if s.Connected() {
			return 1
		}
		return 0
	})
	for _, c := range []prometheus.Collector{m.conflicts, m.reaped, m.deadNodes, m.unavailable, connected} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
