#!/usr/bin/env bash
# TURN relay benchmark: coturn vs `switchboard turn`, same relay-threads, same users, same load — first from our
# load generator `switchboard bench turn`, then from coturn's own `turnutils_uclient`.
#
# Both servers are started here on loopback with the same user, port-range size and relay-threads. Each is then
# driven in turn by `switchboard bench turn` (ALLOCS allocations in pairs, each pair relaying ChannelData to each
# other, so every message crosses the server twice — like `turnutils_uclient -y`), in two modes:
#   fixed    — RATE messages/s in total (both servers should keep up: compare loss, latency and CPU per message)
#   saturate — as fast as the server relays, WINDOW messages in flight per allocation (compare throughput)
# ROUNDS rounds, alternating which server goes first; the table has every run, the ratios use the medians.
#
# Then (UCLIENT=1, the default) the uclient pass: against the same servers, UCLIENT_PROCS `turnutils_uclient`
# processes at once, each `-y -c -m UCLIENT_CLIENTS -n UCLIENT_MSGS -l UCLIENT_SIZE -z UCLIENT_INTERVAL -u alice
# -w secret` (client-to-client pairs over ChannelData, no RTCP allocations; realm from the server's 401), each
# bounded by `timeout UCLIENT_TIMEOUT`. uclient paces every client (one message per UCLIENT_INTERVAL ms, clients
# start 1–6 s apart), so it sets the message rate: its msgs/s (messages received / uclient's "Total transmit time",
# whole seconds, which grows by 10 s when anything is lost) is the offered load, not the server's capacity; the
# comparison is loss, uclient's "Average round trip delay" (in -y mode the one-way time from one client to its
# partner through the server, in ms) and the server's CPU-seconds (utime+stime from /proc/PID/stat over the whole
# batch, allocations included) per message. ROUNDS rounds, the server order rotated (each goes first once in 3).
# Only the uclient pass: MODES= bench/turn.sh. Only the load generator: UCLIENT=0 bench/turn.sh.
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
#      SHORT_CIRCUIT (both | on | off), MODES load-generator modes ("fixed saturate"; empty skips them),
#      UCLIENT (1 | 0), UCLIENT_PROCS uclient processes at once (4), UCLIENT_CLIENTS clients per process (-m, 50),
#      UCLIENT_MSGS messages per client (-n, 500), UCLIENT_SIZE bytes (-l, SIZE), UCLIENT_INTERVAL ms between a
#      client's messages (-z, 20), UCLIENT_TIMEOUT seconds per process (120).
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
MODES=${MODES-fixed saturate}
UCLIENT=${UCLIENT:-1}
UCLIENT_PROCS=${UCLIENT_PROCS:-4}
UCLIENT_CLIENTS=${UCLIENT_CLIENTS:-50}
UCLIENT_MSGS=${UCLIENT_MSGS:-500}
UCLIENT_SIZE=${UCLIENT_SIZE:-$SIZE}
UCLIENT_INTERVAL=${UCLIENT_INTERVAL:-20}
UCLIENT_TIMEOUT=${UCLIENT_TIMEOUT:-120}
case $SHORT_CIRCUIT in
  both) SERVERS="coturn switchboard switchboard-sc" ;;
  on) SERVERS="coturn switchboard-sc" ;;
  off) SERVERS="coturn switchboard" ;;
  *) echo "SHORT_CIRCUIT must be both, on or off" >&2; exit 1 ;;
esac

TOOLS="turnserver turnutils_stunclient python3"
[[ $UCLIENT == 1 ]] && TOOLS+=" turnutils_uclient"
for tool in $TOOLS; do
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

if [[ -n ${MODES// /} ]]; then
echo "load: switchboard bench turn, $ALLOCS allocations ($((ALLOCS / 2)) pairs relaying to each other), ${SIZE}-byte" \
     "ChannelData, ${DURATION}s per run, modes: $MODES (fixed ${RATE} msgs/s, saturating window $WINDOW), $LOAD_THREADS load thread(s)," \
     "relay-threads=$THREADS, $ROUNDS round(s); servers: $SERVERS; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in $MODES; do
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

python3 - "$OUT" "$ROUNDS" "$MODES" $SERVERS <<'PY'
import json, os, statistics, sys
out, rounds, modes, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
print("switchboard = --no-relay-short-circuit (through the relay sockets, like coturn); "
      "switchboard-sc = short circuit on (both allocations of a pair on this server)")
hdr = f"{'mode':9} {'server':14} {'round':>5} {'sent':>9} {'received':>9} {'loss%':>7} {'msgs/s':>8} {'p50_us':>8} {'p99_us':>8} {'cpu_s':>6} {'msgs/cpu_s':>10}"
print(hdr)
med = {}
for mode in modes:
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
for mode in modes:
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
fi

# ---- uclient pass: coturn's turnutils_uclient against the same three servers ----
[[ $UCLIENT == 1 ]] || exit 0

TCK=$(getconf CLK_TCK)
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; } # utime + stime of PID $1

# uclient_run NAME PORT PID ROUND: UCLIENT_PROCS bounded uclient processes at once; logs and meta into $OUT
uclient_run() {
  local t0 t1 c0 c1 i rc=0 ucp=()
  c0=$(cpu_ticks "$3"); t0=$(date +%s.%N)
  for i in $(seq "$UCLIENT_PROCS"); do
    timeout "$UCLIENT_TIMEOUT" turnutils_uclient -y -c -m "$UCLIENT_CLIENTS" -n "$UCLIENT_MSGS" -l "$UCLIENT_SIZE" \
      -z "$UCLIENT_INTERVAL" -u alice -w secret -p "$2" 127.0.0.1 >"$OUT/uclient-$1-$4-$i.log" 2>&1 &
    ucp+=($!); PIDS+=($!)
  done
  for i in "${!ucp[@]}"; do
    rc=0; wait "${ucp[$i]}" || rc=$?
    echo "$rc" >"$OUT/uclient-$1-$4-$((i + 1)).rc"
  done
  t1=$(date +%s.%N); c1=$(cpu_ticks "$3")
  echo "$t0 $t1 $c0 $c1 $TCK" >"$OUT/uclient-$1-$4.meta"
}

echo
echo "uclient: $UCLIENT_PROCS x turnutils_uclient -y -c -m $UCLIENT_CLIENTS -n $UCLIENT_MSGS -l $UCLIENT_SIZE" \
     "-z $UCLIENT_INTERVAL ($((UCLIENT_PROCS * UCLIENT_CLIENTS)) clients, $((UCLIENT_PROCS * UCLIENT_CLIENTS / 2)) pairs," \
     "$((UCLIENT_PROCS * UCLIENT_CLIENTS * 1000 / UCLIENT_INTERVAL)) msgs/s offered once all have started)," \
     "relay-threads=$THREADS, $ROUNDS round(s); servers: $SERVERS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
read -r -a SV <<<"$SERVERS"
for r in $(seq "$ROUNDS"); do
  # rotate the order: round r starts with server (r-1) mod n
  for k in "${!SV[@]}"; do
    who=${SV[$(((k + r - 1) % ${#SV[@]}))]}
    case $who in
      coturn) uclient_run coturn "$P1" "$C_PID" "$r" ;;
      switchboard) uclient_run switchboard "$P2" "$S_PID" "$r" ;;
      switchboard-sc) uclient_run switchboard-sc "$P3" "$SC_PID" "$r" ;;
    esac
  done
done
echo "load average after the uclient runs: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" "$ROUNDS" "$UCLIENT_PROCS" $SERVERS <<'PY'
import os, re, statistics, sys
out, rounds, procs, servers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def parse(path):
    """Totals of one uclient log: the final report if it got there, else the last progress line."""
    text = open(path, errors="replace").read()
    r = {"sent": 0, "recv": 0, "transmit_s": None, "rtt_ms": None, "rtt_max_ms": None, "done": False}
    for m in re.finditer(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", text):
        r["sent"], r["recv"] = int(m[1]), int(m[2])
    m = re.search(r"Total transmit time is (\d+)", text)
    if m:
        r["transmit_s"], r["done"] = int(m[1]), True
    m = re.search(r"Average round trip delay ([\d.]+) ms; min = \d+ ms, max = (\d+) ms", text)
    if m:
        r["rtt_ms"], r["rtt_max_ms"] = float(m[1]), int(m[2])
    r["recv"] = min(r["recv"], r["sent"])  # as uclient itself does
    return r

print("uclient: msgs = messages received by the clients (each relayed twice by the server: client -> relay -> relay -> client);"
      " elapsed = longest uclient 'Total transmit time' (whole s); wall = the batch from start to last exit (allocations included);"
      " rtt = uclient's average (one way client -> partner in -y mode); cpu_s = server CPU over the batch")
hdr = (f"{'server':14} {'round':>5} {'sent':>8} {'received':>8} {'loss%':>7} {'elapsed_s':>9} {'wall_s':>6} {'msgs/s':>7} "
       f"{'rtt_ms':>7} {'rtt_max':>7} {'cpu_s':>6} {'msgs/cpu_s':>10} {'ok':>4}")
print(hdr)
med = {}
for who in servers:
    rows = []
    for r in range(1, rounds + 1):
        t0, t1, c0, c1, tck = open(os.path.join(out, f"uclient-{who}-{r}.meta")).read().split()
        ps = [parse(os.path.join(out, f"uclient-{who}-{r}-{i}.log")) for i in range(1, procs + 1)]
        rcs = [open(os.path.join(out, f"uclient-{who}-{r}-{i}.rc")).read().strip() for i in range(1, procs + 1)]
        ok = sum(1 for p, rc in zip(ps, rcs) if p["done"] and rc == "0")
        sent = sum(p["sent"] for p in ps)
        recv = sum(p["recv"] for p in ps)
        loss = 100.0 * (sent - recv) / sent if sent else 100.0
        wall = float(t1) - float(t0)
        elapsed = max((p["transmit_s"] for p in ps if p["transmit_s"] is not None), default=None) or wall
        rtt_n = sum(p["recv"] for p in ps if p["rtt_ms"] is not None)
        rtt = sum(p["rtt_ms"] * p["recv"] for p in ps if p["rtt_ms"] is not None) / rtt_n if rtt_n else float("nan")
        rtt_max = max((p["rtt_max_ms"] for p in ps if p["rtt_max_ms"] is not None), default=float("nan"))
        cpu = (int(c1) - int(c0)) / int(tck)
        row = {"msgs_s": recv / elapsed, "loss": loss, "rtt": rtt, "cpu": cpu, "per_cpu": recv / cpu if cpu else 0.0}
        rows.append(row)
        print(f"{who:14} {r:>5} {sent:>8} {recv:>8} {loss:>7.3f} {elapsed:>9.0f} {wall:>6.1f} {row['msgs_s']:>7.0f} "
              f"{rtt:>7.2f} {rtt_max:>7} {cpu:>6.2f} {row['per_cpu']:>10.0f} {ok:>2}/{procs}")
    med[who] = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
print()
print("uclient medians and ratios against coturn (ok = processes that finished their report with exit 0):")
ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
c = med["coturn"]
for who in servers:
    if who == "coturn":
        continue
    s = med[who]
    print(f"  {who:14} msgs/s {s['msgs_s']:.0f} vs {c['msgs_s']:.0f} ({ratio(s['msgs_s'], c['msgs_s'])}); "
          f"msgs per server CPU-s {s['per_cpu']:.0f} vs {c['per_cpu']:.0f} ({ratio(s['per_cpu'], c['per_cpu'])}); "
          f"server CPU {s['cpu']:.2f} vs {c['cpu']:.2f} s; loss {s['loss']:.3f}% vs {c['loss']:.3f}%; "
          f"avg rtt {s['rtt']:.2f} vs {c['rtt']:.2f} ms")
PY
