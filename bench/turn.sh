#!/usr/bin/env bash
# TURN relay benchmark: coturn vs `switchboard turn`, same relay-threads, same load from `switchboard bench turn`.
#
# Both servers are started here on loopback with the same user, port-range size and relay-threads. Each is then
# driven in turn by `switchboard bench turn` (ALLOCS allocations in pairs, each pair relaying ChannelData to each
# other, so every message crosses the server twice — like `turnutils_uclient -y`), in two modes:
#   fixed    — RATE messages/s in total (both servers should keep up: compare loss, latency and CPU per message)
#   saturate — as fast as the server relays, WINDOW messages in flight per allocation (compare throughput)
# ROUNDS rounds, alternating which server goes first; the table has every run, the ratios use the medians.
#
# Switchboard runs twice side by side (SHORT_CIRCUIT=both, the default): `switchboard-sc` with the relay-to-relay
# short circuit on (its default: both allocations of a pair are on this server, so each message is handed from
# one allocation to the other inside the server) and `switchboard` with --no-relay-short-circuit (every message
# leaves one relay socket and arrives on the other, as in coturn, which has no short circuit). The second is the
# like-for-like comparison for peers on different servers; the first is what two relay-only peers on the same
# server get. SHORT_CIRCUIT=on or off runs only one of them.
#
# Usage (repo root): bench/turn.sh
# Env: SWITCHBOARD_BIN (default target/release/switchboard, built if missing), THREADS relay threads (2),
#      ALLOCS (100), DURATION seconds per run (5), RATE for the fixed run (20000), SIZE payload bytes (200),
#      WINDOW (8), LOAD_THREADS load-generator threads (1), ROUNDS (3), LOADGEN_BIN the binary whose
#      `bench turn` generates the load (default SWITCHBOARD_BIN; lets an older server build be measured),
#      SHORT_CIRCUIT (both | on | off).
set -euo pipefail

THREADS=${THREADS:-2}
ALLOCS=${ALLOCS:-100}
DURATION=${DURATION:-5}
RATE=${RATE:-20000}
SIZE=${SIZE:-200}
WINDOW=${WINDOW:-8}
LOAD_THREADS=${LOAD_THREADS:-1}
ROUNDS=${ROUNDS:-3}
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
LOADGEN=${LOADGEN_BIN:-$BIN}
SHORT_CIRCUIT=${SHORT_CIRCUIT:-both}
case $SHORT_CIRCUIT in
  both) SERVERS="coturn switchboard switchboard-sc" ;;
  on) SERVERS="coturn switchboard-sc" ;;
  off) SERVERS="coturn switchboard" ;;
  *) echo "SHORT_CIRCUIT must be both, on or off" >&2; exit 1 ;;
esac

for tool in turnserver turnutils_stunclient python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install coturn python3)" >&2; exit 1; }
done
if [[ ! -x "$BIN" ]]; then
  echo "building $BIN ..." >&2
  cargo build --release -p switchboard >&2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
OUT=$(mktemp -d)
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

wait_udp() { # wait until something answers STUN on 127.0.0.1:$1
  for _ in $(seq 50); do
    local out
    out=$(timeout 2 turnutils_stunclient -p "$1" 127.0.0.1 2>&1 || true)
    [[ "$out" == *"reflexive addr"* ]] && return 0
    sleep 0.2
  done
  echo "server on port $1 did not come up" >&2; exit 1
}

P1=$(free_port); P2=$(free_port); P3=$(free_port)
turnserver -n --no-cli --no-tls --no-dtls --allow-loopback-peers --lt-cred-mech --realm bench --user alice:secret \
  --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$P1" --min-port 40000 --max-port 44999 \
  --relay-threads "$THREADS" --no-stdout-log --log-file /dev/null >/dev/null 2>&1 &
C_PID=$!; PIDS+=($C_PID)
"$BIN" turn --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$P2" --realm bench --user alice:secret \
  --allowed-peer-ip 127.0.0.1 --min-port 45000 --max-port 49999 --relay-threads "$THREADS" \
  --no-relay-short-circuit >/dev/null 2>&1 &
S_PID=$!; PIDS+=($S_PID)
"$BIN" turn --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$P3" --realm bench --user alice:secret \
  --allowed-peer-ip 127.0.0.1 --min-port 50000 --max-port 54999 --relay-threads "$THREADS" >/dev/null 2>&1 &
SC_PID=$!; PIDS+=($SC_PID)
wait_udp "$P1"; wait_udp "$P2"; wait_udp "$P3"

# run NAME PORT PID MODE ROUND: one bounded `switchboard bench turn` run, JSON into $OUT
run() {
  local rate=0
  [[ $4 == fixed ]] && rate=$RATE
  timeout $((DURATION + 60)) "$LOADGEN" bench turn --server "127.0.0.1:$2" --user alice --password secret \
    --allocations "$ALLOCS" --duration "$DURATION" --rate "$rate" --window "$WINDOW" --size "$SIZE" \
    --threads "$LOAD_THREADS" --server-pid "$3" >"$OUT/$4-$1-$5.json"
}

echo "load: switchboard bench turn, $ALLOCS allocations ($((ALLOCS / 2)) pairs relaying to each other), ${SIZE}-byte" \
     "ChannelData, ${DURATION}s per run, fixed ${RATE} msgs/s and saturating (window $WINDOW), $LOAD_THREADS load thread(s)," \
     "relay-threads=$THREADS, $ROUNDS round(s); servers: $SERVERS; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in fixed saturate; do
  for r in $(seq "$ROUNDS"); do
    # alternate the order: forward in odd rounds, reversed in even ones
    order=$SERVERS
    (( r % 2 )) || order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for who in $order; do
      case $who in
        coturn) run coturn "$P1" "$C_PID" "$mode" "$r" ;;
        switchboard) run switchboard "$P2" "$S_PID" "$mode" "$r" ;;
        switchboard-sc) run switchboard-sc "$P3" "$SC_PID" "$mode" "$r" ;;
      esac
    done
  done
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" "$ROUNDS" $SERVERS <<'PY'
import json, os, statistics, sys
out, rounds, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("switchboard = --no-relay-short-circuit (through the relay sockets, like coturn); "
      "switchboard-sc = short circuit on (both allocations of a pair on this server)")
hdr = f"{'mode':9} {'server':14} {'round':>5} {'sent':>9} {'received':>9} {'loss%':>7} {'msgs/s':>8} {'p50_us':>8} {'p99_us':>8} {'cpu_s':>6} {'msgs/cpu_s':>10}"
print(hdr)
med = {}
for mode in ("fixed", "saturate"):
    for who in servers:
        rows = []
        for r in range(1, rounds + 1):
            with open(os.path.join(out, f"{mode}-{who}-{r}.json")) as f:
                j = json.load(f)
            rows.append(j)
            lat = j["latency_us"]
            print(f"{mode:9} {who:14} {r:>5} {j['sent']:>9} {j['received']:>9} {j['loss_pct']:>7.3f} {j['msgs_per_s']:>8.0f} "
                  f"{lat['p50']:>8.1f} {lat['p99']:>8.1f} {j['server_cpu_s'] or 0:>6.2f} {j['msgs_per_server_cpu_s'] or 0:>10.0f}")
        med[(mode, who)] = {k: statistics.median([x["latency_us"][k] if k in ("p50", "p99") else (x[k] or 0) for x in rows])
                            for k in ("msgs_per_s", "msgs_per_server_cpu_s", "loss_pct", "p50", "p99")}
print()
print("medians and ratios against coturn:")
ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
for mode in ("fixed", "saturate"):
    c = med[(mode, "coturn")]
    for who in servers:
        if who == "coturn":
            continue
        s = med[(mode, who)]
        print(f"  {mode:9} {who:14} msgs/s {s['msgs_per_s']:.0f} vs {c['msgs_per_s']:.0f} ({ratio(s['msgs_per_s'], c['msgs_per_s'])}); "
              f"msgs per server CPU-s {s['msgs_per_server_cpu_s']:.0f} vs {c['msgs_per_server_cpu_s']:.0f} "
              f"({ratio(s['msgs_per_server_cpu_s'], c['msgs_per_server_cpu_s'])}); loss {s['loss_pct']:.3f}% vs {c['loss_pct']:.3f}%; "
              f"p50 {s['p50']:.0f} vs {c['p50']:.0f} us; p99 {s['p99']:.0f} vs {c['p99']:.0f} us")
PY
