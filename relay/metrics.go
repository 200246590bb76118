package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's Prometheus series. Label values are bound once so
// the per-packet path only does atomic adds.
type metrics struct {
	allocations        prometheus.Gauge
	allocationsCreated prometheus.Counter
	allocationsRefused *prometheus.CounterVec
	permissions        prometheus.Gauge
	channels           prometheus.Gauge
	peersRefused       *prometheus.CounterVec
	authFailures       *prometheus.CounterVec
	lifetimes          prometheus.Histogram
	allocationBytes    prometheus.Histogram

	bytesToPeer, bytesFromPeer     prometheus.Counter
	packetsToPeer, packetsFromPeer prometheus.Counter
	droppedBandwidth               prometheus.Counter
	droppedOwnAddress              prometheus.Counter
	droppedBacklog                 prometheus.Counter // pion's read of a relay or listening socket too far behind
	droppedSendFailed              prometheus.Counter // the kernel refused the send (full buffer, ICMP error)
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "rendezvous", "relay"
	m := &metrics{
		allocations: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "allocations", Help: "Current TURN allocations."}),
		allocationsCreated: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "allocations_created_total", Help: "TURN allocations created."}),
		allocationsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "allocations_refused_total", Help: "Allocate requests refused, by reason."}, []string{"reason"}),
		permissions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "permissions", Help: "Current TURN permissions."}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "channels", Help: "Current TURN channel bindings."}),
		peersRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "peers_refused_total", Help: "Peer addresses refused by the peer filter, by reason."}, []string{"reason"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "auth_failures_total", Help: "Failed TURN authentications, by reason."}, []string{"reason"}),
		lifetimes: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "allocation_lifetime_seconds", Help: "How long allocations lived.",
			Buckets: []float64{1, 10, 60, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600}}),
		allocationBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "allocation_bytes", Help: "Bytes relayed per allocation, both directions.",
			Buckets: prometheus.ExponentialBuckets(1024, 8, 9)}),
	}
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "bytes_total", Help: "Payload bytes relayed, by direction."}, []string{"direction"})
	packets := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "packets_total", Help: "Packets relayed, by direction."}, []string{"direction"})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
		Name: "dropped_packets_total", Help: "Relayed packets dropped, by reason."}, []string{"reason"})
	m.bytesToPeer, m.bytesFromPeer = bytes.WithLabelValues("to_peer"), bytes.WithLabelValues("from_peer")
	m.packetsToPeer, m.packetsFromPeer = packets.WithLabelValues("to_peer"), packets.WithLabelValues("from_peer")
	m.droppedBandwidth = dropped.WithLabelValues("bandwidth")
	m.droppedOwnAddress = dropped.WithLabelValues("own_address")
	m.droppedBacklog = dropped.WithLabelValues("backlog")
	m.droppedSendFailed = dropped.WithLabelValues("send_failed")
	for _, r := range []string{"user_quota", "total_quota", "ip_quota", "no_relay_port", "address_family"} {
		m.allocationsRefused.WithLabelValues(r)
	}
	for _, r := range []string{authUnknownUser, authExpired, authBadPassword, authRateLimited} {
		m.authFailures.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.allocations, m.allocationsCreated, m.allocationsRefused,
		m.permissions, m.channels, m.peersRefused, m.authFailures, m.lifetimes, m.allocationBytes,
		bytes, packets, dropped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
