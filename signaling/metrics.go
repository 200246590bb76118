package signaling

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	upgrades         prometheus.Counter
	connections      prometheus.Gauge
	peers            prometheus.Gauge
	rooms            prometheus.Gauge
	framesReceived   prometheus.Counter
	framesSent       prometheus.Counter
	requests         *prometheus.CounterVec
	errors           *prometheus.CounterVec
	disconnects      *prometheus.CounterVec
	resumes          prometheus.Counter
	hostMigrations   prometheus.Counter
	signals          prometheus.Counter
	stunObservations *prometheus.CounterVec
	rtt              prometheus.Histogram
	connectRequests  prometheus.Counter
	connectOutcomes  *prometheus.CounterVec
	connectSeconds   *prometheus.HistogramVec
	connectProbes    *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	const ns, sub = "rendezvous", "signaling"
	m := &metrics{
		upgrades: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "upgrades_total", Help: "WebSocket upgrades accepted (including those then rejected with an error frame)."}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "connections", Help: "Open WebSocket connections."}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "peers", Help: "Registered peers connected to this node."}),
		rooms: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "rooms", Help: "Rooms created on this node and not yet removed."}),
		framesReceived: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "frames_received_total", Help: "Frames received from peers."}),
		framesSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "frames_sent_total", Help: "Frames written to peers."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "requests_total", Help: "Valid frames handled, by type."}, []string{"type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "errors_total", Help: "Error frames sent, by code."}, []string{"code"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "disconnects_total", Help: "Connections ended, by reason."}, []string{"reason"}),
		resumes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "resumes_total", Help: "Sessions resumed with a resume token."}),
		hostMigrations: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "host_migrations_total", Help: "Room host handovers after the host left."}),
		signals: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "signals_delivered_total", Help: "Signal frames handed to recipients."}),
		stunObservations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "stun_peer_tokens_total", Help: "STUN Bindings with a PEER-TOKEN reported by the relay, by result."}, []string{"result"}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "heartbeat_rtt_seconds", Help: "Round trip of server pings.",
			Buckets: []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .02, .028, .04, .06, .1, .25, .5, 1, 2.5, 5}}),
		connectRequests: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connect_sessions_total", Help: "Punch sessions scheduled."}),
		connectOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connect_outcomes_total", Help: "Reported connect outcomes (direct, relayed, failed) by NAT type pair."},
			[]string{"outcome", "nat_pair"}),
		connectSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "connect_duration_seconds", Help: "Time from punch start to a working path, by outcome and NAT type pair.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12)}, []string{"outcome", "nat_pair"}),
		connectProbes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "connect_probes", Help: "Birthday probes a peer sent for one connect, by outcome and NAT type pair.",
			Buckets: []float64{16, 32, 64, 128, 256, 512, 1024, 2048, 4096}}, []string{"outcome", "nat_pair"}),
	}
	for _, c := range []prometheus.Collector{m.upgrades, m.connections, m.peers, m.rooms, m.framesReceived,
		m.framesSent, m.requests, m.errors, m.disconnects, m.resumes, m.hostMigrations, m.signals,
		m.stunObservations, m.rtt, m.connectRequests, m.connectOutcomes, m.connectSeconds, m.connectProbes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
