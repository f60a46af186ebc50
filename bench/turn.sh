#!/usr/bin/env bash
# TURN relay benchmark: coturn vs `switchboard turn`, same relay-threads, same turnutils_uclient load.
# Prints, per server: messages/s (received), loss, average RTT; then the ratio ours/coturn.
#
# Usage (repo root): bench/turn.sh
# Env: SWITCHBOARD_BIN (default target/release/switchboard, built if missing), THREADS (2), CLIENTS (20),
#      MSGS per client (500), LEN bytes (200), INTERVAL ms between a session's packets (5), TCP=1 for -t.
set -euo pipefail

THREADS=${THREADS:-2}
CLIENTS=${CLIENTS:-20}
MSGS=${MSGS:-500}
LEN=${LEN:-200}
INTERVAL=${INTERVAL:-5}
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
TRANSPORT_FLAG=()
[[ "${TCP:-0}" == 1 ]] && TRANSPORT_FLAG=(-t)

for tool in turnserver turnutils_uclient; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install coturn)" >&2; exit 1; }
done
if [[ ! -x "$BIN" ]]; then
  echo "building $BIN ..." >&2
  cargo build --release -p switchboard >&2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
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

# CPU time (user+system, all threads) a process has used, in seconds.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

# run_load PORT SERVER_PID → prints "msgs_per_s loss_pct rtt_ms sent recv server_cpu_s"
run_load() {
  local out t0 t1 c0 c1
  c0=$(cpu_secs "$2")
  t0=$(date +%s.%N)
  out=$(turnutils_uclient ${TRANSPORT_FLAG[@]+"${TRANSPORT_FLAG[@]}"} -y -c -n "$MSGS" -m "$CLIENTS" -l "$LEN" -z "$INTERVAL" \
        -p "$1" -u alice -w secret 127.0.0.1 2>&1)
  t1=$(date +%s.%N)
  c1=$(cpu_secs "$2")
  python3 - "$out" "$t0" "$t1" "$c0" "$c1" <<'PY'
import re, sys
t = sys.argv[1]
wall = max(float(sys.argv[3]) - float(sys.argv[2]), 1e-3)
tot = [l for l in t.splitlines() if "tot_send_msgs=" in l and "msz=" not in l]
send = int(re.search(r"tot_send_msgs=(\d+)", tot[-1]).group(1)) if tot else 0
recv = int(re.search(r"tot_recv_msgs=(\d+)", tot[-1]).group(1)) if tot else 0
loss = re.search(r"Total lost packets \d+ \(([\d.]+)%\)", t)
rtt = re.search(r"Average round trip delay ([\d.]+) ms", t)
# msgs/s over the whole uclient run (wall clock, includes allocation setup; same for both servers)
cpu = float(sys.argv[5]) - float(sys.argv[4])
print(f"{recv/wall:.0f} {float(loss.group(1)) if loss else 100.0:.3f} {float(rtt.group(1)) if rtt else -1:.3f} {send} {recv} {cpu:.2f}")
PY
}

P1=$(free_port); P2=$(free_port)
turnserver -n --no-cli --no-tls --no-dtls --allow-loopback-peers --lt-cred-mech --realm bench --user alice:secret \
  --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$P1" --min-port 40000 --max-port 44999 \
  --relay-threads "$THREADS" --no-stdout-log --log-file /dev/null >/dev/null 2>&1 &
C_PID=$!; PIDS+=($C_PID)
"$BIN" turn --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$P2" --realm bench --user alice:secret \
  --allowed-peer-ip 127.0.0.1 --min-port 45000 --max-port 49999 --relay-threads "$THREADS" >/dev/null 2>/dev/null &
S_PID=$!; PIDS+=($S_PID)
wait_udp "$P1"; wait_udp "$P2"

echo "load: $CLIENTS uclient sessions (-y: relayed to each other), $MSGS msgs each, $LEN bytes, every ${INTERVAL} ms, relay-threads=$THREADS ${TRANSPORT_FLAG[*]:-udp}"
read -r C_RATE C_LOSS C_RTT C_SENT C_RECV C_CPU < <(run_load "$P1" "$C_PID")
read -r S_RATE S_LOSS S_RTT S_SENT S_RECV S_CPU < <(run_load "$P2" "$S_PID")
printf "%-12s %10s %8s %9s %9s %9s %10s %14s\n" server "msgs/s" "loss%" "rtt_ms" sent recv "cpu_s" "msgs/cpu_s"
for who in C S; do
  name=coturn; [[ $who == S ]] && name=switchboard
  rate=${who}_RATE loss=${who}_LOSS rtt=${who}_RTT sent=${who}_SENT recv=${who}_RECV cpu=${who}_CPU
  per_cpu=$(python3 -c "import sys; r,c=float(sys.argv[1]),float(sys.argv[2]); print(f'{r/c:.0f}' if c > 0 else 'n/a')" "${!recv}" "${!cpu}")
  printf "%-12s %10s %8s %9s %9s %9s %10s %14s\n" "$name" "${!rate}" "${!loss}" "${!rtt}" "${!sent}" "${!recv}" "${!cpu}" "$per_cpu"
done
python3 - "$C_RATE" "$S_RATE" "$C_RECV" "$C_CPU" "$S_RECV" "$S_CPU" <<'PY'
import sys
cr, sr, crecv, ccpu, srecv, scpu = map(float, sys.argv[1:])
print(f"ratio switchboard/coturn relayed msgs/s: {sr/cr:.2f}" if cr else "ratio msgs/s: n/a")
if ccpu > 0 and scpu > 0:
    print(f"ratio switchboard/coturn relayed msgs per server CPU-second: {(srecv/scpu)/(crecv/ccpu):.2f}")
PY
