#!/usr/bin/env bash
# A/B benchmark: coturn's turnserver vs rendezvous' relay (bench/relay/main.go)
# under the same turnutils_uclient load on loopback, alternating servers in
# every round. Writes its section of docs/benchmarks.md.
#
#   sudo bench/relay/run.sh                      # defaults below
#   ROUNDS=3 CLIENTS="100 200 300" SECONDS_PER_RUN=15 bench/relay/run.sh
#
# Load: CLIENTS clients, each sending 200-byte messages every 5 ms (200 msg/s
# offered per client) through its allocation to turnutils_peer, which echoes
# them back. "msg/s" counts client messages; each is relayed twice (to the
# peer and back). Achieved rate is read from uclient's per-second progress
# lines (it ramps clients in and rarely reaches the offered rate): messages received
# back per second in which the clients were sending. RTT
# percentiles come from a probe client (relaybench probe, 500 msg/s at random
# gaps) running during the load plateau. CPU is utime+stime of the server process over the
# uclient run, divided by client messages sent. Peak RSS is VmHWM.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"100 200 300"}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
SERVER_IP=127.0.0.2   # the servers; clients and the peer use 127.0.0.1
PORT=${PORT:-3478}
PEER_PORT=${PEER_PORT:-3480}
OUT=${OUT:-docs/benchmarks.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relaybench.XXXXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v turnutils_uclient >/dev/null || ! command -v turnserver >/dev/null; then
	if [ "$(id -u)" = 0 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >/dev/null || {
			apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >/dev/null; }
	else
		echo "needs coturn (apt-get install coturn)" >&2; exit 1
	fi
fi
# sudo resets PATH; look where the Go installer puts it.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "needs go on PATH (sudo resets it: sudo env PATH=\"\$PATH\" $0)" >&2; exit 1; }
go build -o "$WORK/relaybench" ./bench/relay/
COTURN_VERSION=$(dpkg-query -W -f='${Version}' coturn 2>/dev/null || echo unknown)

turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >/dev/null 2>&1 &
PIDS+=($!)

start_server() { # $1 = coturn|rendezvous; prints the PID
	case $1 in
	coturn)
		turnserver -n --listening-ip=$SERVER_IP --relay-ip=$SERVER_IP --listening-port=$PORT \
			--lt-cred-mech --user=bench:bench --realm=rendezvous --no-tls --no-dtls --no-cli \
			--allow-loopback-peers --min-port=49152 --max-port=65535 --no-stdout-log \
			--log-file=/dev/null --userdb="$WORK/turndb" >/dev/null 2>&1 &
		;;
	rendezvous)
		"$WORK/relaybench" -listen $SERVER_IP:$PORT -relay-address $SERVER_IP \
			-allow-peers 127.0.0.1/32 >/dev/null 2>&1 &
		;;
	esac
	echo $!
}

port_bound() { ss -uln "sport = :$PORT" | grep -q $SERVER_IP; }

wait_port() { # wait until the server has bound the port
	for _ in $(seq 100); do
		if port_bound; then return 0; fi
		sleep 0.1
	done
	echo "server did not start" >&2; return 1
}

stop_server() { # the server is not our child (started in a subshell): poll until it is gone and the port free
	kill "$1" 2>/dev/null || true
	for _ in $(seq 300); do
		state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo gone)
		if { [ "$state" = gone ] || [ "$state" = Z ]; } && ! port_bound; then return 0; fi
		sleep 0.1
	done
	kill -9 "$1" 2>/dev/null || true
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# UDP receive-buffer errors of the whole host (RcvbufErrors in /proc/net/snmp).
rcvbuf_errors() { awk '/^Udp:/{getline; print $6; exit}' /proc/net/snmp; }

# Receive-buffer drops counted on the UDP sockets an ss filter selects (the
# kernel's per-socket sk_drops), to tell whose socket overflowed.
sock_drops() { ss -uanmH "$@" | grep -o ',d[0-9]*)' | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}'; }

RESULTS=$WORK/results.tsv
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
	for clients in $CLIENTS; do
		order="coturn rendezvous"
		[ $((round % 2)) = 0 ] && order="rendezvous coturn"
		for server in $order; do
			if port_bound; then echo "port $PORT is taken by something else" >&2; exit 1; fi
			pid=$(start_server $server)
			PIDS+=("$pid")
			wait_port
			sleep 0.5
			n=$((200 * SECONDS_PER_RUN))
			c0=$(cpu_ticks "$pid")
			drops0=$(rcvbuf_errors)
			peer0=$(sock_drops "sport = :$PEER_PORT")
			turnutils_uclient -c -m "$clients" -z 5 -l 200 -n "$n" -e 127.0.0.1 -r "$PEER_PORT" \
				-L 127.0.0.1 -u bench -w bench -p "$PORT" $SERVER_IP >"$WORK/uc.out" 2>&1 &
			ucpid=$!
			# Probe RTT once the load is flowing.
			for _ in $(seq 600); do
				grep -q 'tot_send_msgs=[1-9]' "$WORK/uc.out" && break
				sleep 0.1
			done
			"$WORK/relaybench" probe -server $SERVER_IP:$PORT -interval 2ms -duration $((SECONDS_PER_RUN * 2 / 3))s \
				-samples "$WORK/rtt.$server.$clients.$round" >"$WORK/probe.out" 2>&1 || true
			wait $ucpid || true
			c1=$(cpu_ticks "$pid")
			drops1=$(rcvbuf_errors)
			# The server's sockets live until it stops, the peer's all along;
			# the rest of the drops were on the clients' (or closed relay) sockets.
			server_drops=$(sock_drops src $SERVER_IP)
			peer_drops=$(($(sock_drops "sport = :$PEER_PORT") - peer0))
			rss=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
			stop_server "$pid"
			hz=$(getconf CLK_TCK)
			awk -v server=$server -v clients=$clients -v round=$round -v cpu=$((c1 - c0)) -v hz="$hz" \
				-v rss="$rss" -v drops=$((drops1 - drops0)) \
				-v sdrops="$server_drops" -v pdrops="$peer_drops" -v probe="$(cat "$WORK/probe.out")" '
				/start_mclient: msz=/ {
					match($0, /tot_send_msgs=[0-9]+/); sn = substr($0, RSTART+14, RLENGTH-14) + 0
					match($0, /tot_recv_msgs=[0-9]+/); r = substr($0, RSTART+14, RLENGTH-14) + 0
					if (sn > prevsent) active++   # a second in which the clients were sending
					prevsent = sn; recv = r
				}
				/Total lost packets/ { match($0, /\(([0-9.]+)%\)/); loss = substr($0, RSTART+1, RLENGTH-3) }
				/tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$/ { match($0, /tot_send_msgs=[0-9]+/); sent = substr($0, RSTART+14, RLENGTH-14) }
				END {
					# achieved rate: messages echoed back per second of sending
					rate = active ? recv / active : 0
					split(probe, p, /[ =]/); p50 = p99 = "-"
					for (i in p) { if (p[i] == "p50_ms") p50 = p[i+1]; if (p[i] == "p99_ms") p99 = p[i+1] }
					us = sent ? cpu / hz * 1e6 / sent : 0
					cdrops = drops - sdrops - pdrops; if (cdrops < 0) cdrops = 0
					printf "%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%.1f\t%.1f\t%d\t%d\t%d\t%d\n", server, clients, round, rate, loss, p50, p99, us, rss / 1024, drops, sdrops, pdrops, cdrops
				}' "$WORK/uc.out" >>"$RESULTS"
			tail -1 "$RESULTS" >&2
			# A run whose load tool failed (it gives up on some errors) has no loss
			# figure; its probe ran without load, so its samples are left out too.
			# The usual one is "channel bind: error 400", and it is the client's
			# doing: each client binds a random channel (0x4000-0x7FFF) to the
			# peer's port + 1, then a second random one to the peer. When the
			# two draws are equal the server must refuse the second bind (RFC 8656
			# §12.2: channel already bound to another peer), 1 in 16384 per client,
			# so about 1 run in 80 at 200 clients, whichever server runs.
			if [ -z "$(tail -1 "$RESULTS" | cut -f5)" ]; then
				echo "turnutils_uclient failed; run left out:" >&2
				tail -3 "$WORK/uc.out" >&2
				rm -f "$WORK/rtt.$server.$clients.$round"
			fi
		done
	done
done

# Probe RTT percentiles pooled over every round's samples, and the relay's
# p99 against coturn's with a paired bootstrap interval (relaybench pooled).
POOLED=$WORK/pooled.tsv
"$WORK/relaybench" pooled "$WORK" >"$POOLED"

# Median over rounds per server and load; RTT pooled.
TABLE=$(sort -k2,2n -k1,1 "$RESULTS" | awk -F'\t' -v pooled="$POOLED" '
	BEGIN { while ((getline line < pooled) > 0) { split(line, q, "\t"); pk = q[1] "\t" q[2]; Q50[pk] = q[3]; Q90[pk] = q[4]; Q99[pk] = q[5]
		VS[pk] = q[2] == "coturn" ? "—" : q[6] == "-" ? "-" : q[7] == "-" || q[7] == 0 ? q[6] : q[6] " (" q[7] "–" q[8] ")" } }
	$5 == "" { next } # a run whose client failed

	function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }; return a[int((n + 1) / 2)] }
	{ key = $2 "\t" $1; n[key]++; i = n[key]; R[key, i] = $4; L[key, i] = $5; P5[key, i] = $6; P9[key, i] = $7; U[key, i] = $8; M[key, i] = $9; D[key, i] = $10
	  if (!(key in seen)) { seen[key] = 1; order[++k] = key } }
	END {
		print "| clients × 200 msg/s offered | server | achieved msg/s | loss % | probe RTT p50 ms | p90 ms | p99 ms | p99 ÷ coturn (90% interval) | server CPU µs/msg | peak RSS MiB | kernel rcvbuf drops |"
		print "|---|---|---|---|---|---|---|---|---|---|---|"
		for (x = 1; x <= k; x++) {
			key = order[x]; split(key, kk, "\t"); c = n[key]
			for (f = 1; f <= 7; f++) for (i = 1; i <= c; i++) {
				v = (f == 1 ? R[key, i] : f == 2 ? L[key, i] : f == 3 ? P5[key, i] : f == 4 ? P9[key, i] : f == 5 ? U[key, i] : f == 6 ? M[key, i] : D[key, i]); a[f, i] = v }
			for (f = 1; f <= 7; f++) { for (i = 1; i <= c; i++) b[i] = a[f, i] + 0; m[f] = med(b, c) }
			printf "| %d | %s | %.0f | %.2f | %s | %s | %s | %s | %.1f | %.1f | %d |\n", kk[1], kk[2], m[1], m[2], Q50[key], Q90[key], Q99[key], VS[key], m[5], m[6], m[7]
		}
	}')
RAW=$(awk -F'\t' '{printf "%s %s clients round %s: %s msg/s, loss %s%%, p50 %s ms, p99 %s ms, %s µs/msg, %s MiB, %s drops (server %s, peer %s, clients %s)\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13}' "$RESULTS")

SECTION=$(cat <<EOF
<!-- relay-benchmark:begin -->
## Relay: rendezvous vs coturn (TURN over UDP, loopback)

Reproduce: \`sudo ROUNDS=$ROUNDS CLIENTS="$CLIENTS" SECONDS_PER_RUN=$SECONDS_PER_RUN bench/relay/run.sh\`
($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), coturn $COTURN_VERSION, $(go version | awk '{print $3}'),
rendezvous relay with its default read sockets (one per CPU: $(nproc)) and 8 MiB socket buffers.)

Load: \`turnutils_uclient -c -m CLIENTS -z 5 -l 200 -n $((200 * SECONDS_PER_RUN))\` to \`turnutils_peer\` (echo),
servers alternating first/second each round; medians of $ROUNDS rounds. A message is one client message, relayed
twice (client → peer → client). RTT from a probe client sending 500 msg/s at random (exponential) gaps while
the load runs, percentiles over the probes of all rounds (each run's own p50/p99 are in "Every run"). "p99 ÷
coturn" is the relay's pooled p99 over coturn's, with a 90% interval from a paired bootstrap over rounds
(\`relaybench pooled\`): an interval that holds 1 is a tie. The machine is shared, so absolute numbers move
between runs; compare the two rows of one load.

$TABLE

<details><summary>Every run</summary>

\`\`\`
$RAW
\`\`\`
</details>
<!-- relay-benchmark:end -->
EOF
)

mkdir -p "$(dirname "$OUT")"
touch "$OUT"
if grep -q '<!-- relay-benchmark:begin -->' "$OUT"; then
	awk -v section="$SECTION" '
		/<!-- relay-benchmark:begin -->/ { print section; skip = 1; next }
		/<!-- relay-benchmark:end -->/ { skip = 0; next }
		!skip' "$OUT" >"$OUT.tmp" && mv "$OUT.tmp" "$OUT"
else
	[ -s "$OUT" ] || printf '# Benchmarks\n' >"$OUT"
	printf '\n%s\n' "$SECTION" >>"$OUT"
fi
echo "wrote $OUT" >&2
