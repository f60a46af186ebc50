#!/usr/bin/env bash
# SFU benchmark: `switchboard serve` (sfu rooms) vs Janus 1.1 (videoroom plugin), the same load from
# `switchboard bench sfu`, side by side in one run.
#
# Loads (LOADS, "PxN" = P publishers, N subscribers; "NxN" with N publishers and no extra subscriber is an N×N
# room where every publisher receives every other one): each publisher sends one VP8 track at BITRATE (30 fps,
# packets <= 1200 bytes, stamped frames), every receiver measures loss and one-way latency through the server.
# For every load, each server is started fresh (so RSS growth per subscriber is the room's), driven, stopped.
#
# Everything runs in a private network namespace (no link to the outside): Janus gathers ICE candidates on no
# loopback interface, so the namespace has a veth interface (both ends inside) with 198.18.0.1 (RFC 2544 benchmarking range) for
# Janus's media; Switchboard's SFU and every HTTP endpoint listen on 127.0.0.1 there.
#
# Usage (repo root, as root): bench/sfu.sh
# Env: SWITCHBOARD_BIN (default: release build in /work/rel-target), LOADS ("1x50 1x200 1x500 6x6"),
#      DURATION seconds per run (10), BITRATE (1500000), PACING the publishers' --pacing-factor (2.5: RTP paced
#      like Chromium's, at 2.5 x BITRATE in bursts of at most 5 ms worth; 0: each frame leaves as one burst),
#      JANUS=0 to skip Janus, SFU_ENV extra environment for `switchboard serve`
#      (e.g. "SWITCHBOARD_SFU_BANDWIDTH_ESTIMATION=false"), RESULTS json-lines output file,
#      SERVER_CPUS / GEN_CPUS pin the server (Switchboard or Janus) / the load generator to these CPUs (taskset),
#      BASELINE_BIN another `switchboard` build (e.g. of an older commit) served side by side as "baseline"
#      (the load generator is always SWITCHBOARD_BIN's).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADS=${LOADS:-"1x50 1x200 1x500 6x6"}
DURATION=${DURATION:-10}
BITRATE=${BITRATE:-1500000}
PACING=${PACING:-2.5}
JANUS=${JANUS:-1}
SFU_ENV=${SFU_ENV:-}
BIN=${SWITCHBOARD_BIN:-}
BASELINE_BIN=${BASELINE_BIN:-}
# Optional CPU pinning (taskset lists, e.g. SERVER_CPUS=0 GEN_CPUS=1: the server on one core, the generator on the other).
SERVER_PIN=(); [[ -n "${SERVER_CPUS:-}" ]] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
GEN_PIN=(); [[ -n "${GEN_CPUS:-}" ]] && GEN_PIN=(taskset -c "$GEN_CPUS")

[[ $(id -u) == 0 ]] || { echo "bench/sfu.sh needs root (network namespace)" >&2; exit 1; }
for t in jq curl; do command -v $t >/dev/null || apt-get install -y $t >&2; done
if [[ "$JANUS" == 1 ]] && ! command -v janus >/dev/null; then apt-get install -y janus >&2; fi
if [[ -z "$BIN" ]]; then
  echo "building switchboard (release) ..." >&2
  (cd "$ROOT" && CARGO_TARGET_DIR=/work/rel-target cargo build --release -p switchboard >&2)
  BIN=/work/rel-target/release/switchboard
fi

NS=sbbench$$
WORK=$(mktemp -d)
RESULTS=${RESULTS:-$WORK/results.jsonl}
SERVER_PID=
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
# A veth pair with both ends inside the namespace (the `dummy` module may be missing in containers).
ip -n "$NS" link add sb0 type veth peer name sb1
ip -n "$NS" addr add 198.18.0.1/32 dev sb0
ip -n "$NS" link set sb0 up
ip -n "$NS" link set sb1 up
in_ns() { ip netns exec "$NS" "$@"; }

stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

delay_ms() { # $1: a quantile, $2: a /metrics text -> sfu_forward_delay_seconds at that quantile in ms, or null
  local v
  v=$(awk -v key="sfu_forward_delay_seconds{quantile=\"$1\"}" '$1 == key {print $2 * 1000; exit}' <<<"$2")
  echo "${v:-null}"
}

start_switchboard() { # $1: the binary
  # `ip netns exec` execs the command: $! is the server itself.
  env SWITCHBOARD_ROOMS_DEFAULT_MODE=sfu SWITCHBOARD_ROOMS_MAX_PARTICIPANTS=2000 RUST_LOG=warn $SFU_ENV \
    ip netns exec "$NS" "${SERVER_PIN[@]}" "$1" serve --http 127.0.0.1:18080 --sfu-port 0 --no-turn >"$WORK/sb.out" 2>"$WORK/sb.err" &
  SERVER_PID=$!
  for _ in $(seq 100); do grep -q "listening http" "$WORK/sb.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "switchboard serve did not start:" >&2; cat "$WORK/sb.err" >&2; exit 1
}

janus_config() {
  local d=$WORK/janus L=/usr/lib/x86_64-linux-gnu/janus
  mkdir -p "$d"
  cat >"$d/janus.jcfg" <<JCFG
general: {
	configs_folder = "$d"
	plugins_folder = "$L/plugins"
	transports_folder = "$L/transports"
	events_folder = "$L/events"
	loggers_folder = "$L/loggers"
	debug_level = 3
	session_timeout = 120
}
media: {
	rtp_port_range = "20000-60000"
}
nat: {
	ice_enforce_list = "198.18.0.1"
	full_trickle = false
	ice_lite = false
	ice_tcp = false
}
plugins: {
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}
transports: {
	disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}
events: {
	broadcast = false
}
loggers: {
	disable = "libjanus_jsonlog.so"
}
JCFG
  cat >"$d/janus.transport.http.jcfg" <<JCFG
general: {
	json = "compact"
	base_path = "/janus"
	http = true
	port = 18088
	ip = "127.0.0.1"
	https = false
}
admin: {
	admin_http = false
	admin_https = false
}
JCFG
  printf 'general: {\n}\n' >"$d/janus.plugin.videoroom.jcfg"
}

start_janus() {
  ip netns exec "$NS" "${SERVER_PIN[@]}" janus -F "$WORK/janus" -C "$WORK/janus/janus.jcfg" -o >"$WORK/janus.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    in_ns curl -sf http://127.0.0.1:18088/janus/info >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "janus did not start:" >&2; tail -20 "$WORK/janus.log" >&2; exit 1
}

run_load() { # $1 target, $2 publishers, $3 subscribers
  local target=$1 p=$2 n=$3 args=()
  if [[ $target == switchboard || $target == baseline ]]; then
    if [[ $target == baseline ]]; then start_switchboard "$BASELINE_BIN"; else start_switchboard "$BIN"; fi
    args=(--url http://127.0.0.1:18080)
  else
    start_janus
    args=(--janus http://127.0.0.1:18088/janus --bind 198.18.0.1)
  fi
  sleep 0.5
  local out
  if out=$(RUST_LOG=warn timeout 300 ip netns exec "$NS" "${GEN_PIN[@]}" "$BIN" bench sfu "${args[@]}" --publishers "$p" \
      --subscribers "$n" --duration "$DURATION" --bitrate "$BITRATE" --pacing-factor "$PACING" --server-pid "$SERVER_PID" 2>"$WORK/bench.err"); then
    # Switchboard's own forwarding delay (kernel receive of a datagram → what it caused handed back to the kernel),
    # from its /metrics summary: the server's added latency without the load generator's.
    local q50=null q99=null
    if [[ $target != janus ]]; then
      local m
      m=$(in_ns curl -s --max-time 3 http://127.0.0.1:18080/metrics || true)
      q50=$(delay_ms 0.5 "$m"); q99=$(delay_ms 0.99 "$m")
    fi
    echo "$out" | jq -c --arg load "${p}x${n}" --arg target "$target" --argjson q50 "$q50" --argjson q99 "$q99" \
      '. + {load: $load, target: $target, server_delay_p50_ms: $q50, server_delay_p99_ms: $q99}' | tee -a "$RESULTS" >&2
  else
    echo "{\"target\":\"$target\",\"load\":\"${p}x${n}\",\"error\":$(tail -3 "$WORK/bench.err" | jq -Rs .)}" | tee -a "$RESULTS" >&2
  fi
  stop_server
}

[[ "$JANUS" == 1 ]] && janus_config
: >"$RESULTS"
for load in $LOADS; do
  p=${load%x*}; n=${load#*x}
  # "6x6": six publishers who all receive each other, no extra subscriber.
  if [[ "$p" == "$n" && "$p" != 1 ]]; then n=0; fi
  run_load switchboard "$p" "$n"
  [[ -n "$BASELINE_BIN" ]] && run_load baseline "$p" "$n"
  [[ "$JANUS" == 1 ]] && run_load janus "$p" "$n"
done

echo
[[ -n "$BASELINE_BIN" ]] && echo "baseline: $BASELINE_BIN"
echo "SFU benchmark: $(nproc) cores, ${DURATION}s per run, ${BITRATE} bit/s per publisher, pacing ${PACING}x, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
jq -rs '
  def f(x; d): if x == null then "-" else (x * pow(10; d) | round / pow(10; d) | tostring) end;
  (["load","server","recv","fwd pkt/s","frame loss %","server CPU %","srv runq wait %","pkts/CPU-s","p50 ms","p99 ms","server delay p50/p99 ms","RSS/sub KiB","gen CPU %","drained s"] | join(" | ")),
  (.[] | if .error then [.load, .target, "ERROR: " + (.error | gsub("\n"; " "))] | join(" | ") else
    [.load, .target, "\(.connected)/\(.participants)", f(.forwarded_pps; 0), f(.frame_loss_pct; 2), f(.server_cpu_pct; 1), f(.server_runqueue_wait_pct; 1),
     f(.forwarded_pkts_per_cpu_s; 0), f(.latency_p50_ms; 2), f(.latency_p99_ms; 2),
     "\(f(.server_delay_p50_ms; 3))/\(f(.server_delay_p99_ms; 3))",
     f((.rss_per_subscriber_bytes // null) | if . == null then null else . / 1024 end; 0), f(.generator_cpu_pct; 0), f(.drained_s; 1)] | join(" | ") end),
  "",
  "ratios switchboard/janus and switchboard/baseline (pkts per server CPU-second; p99 latency):",
  (group_by(.load)[] | ["janus", "baseline"][] as $other |
    (map(select(.target == "switchboard" and .error == null))[0]) as $s | (map(select(.target == $other and .error == null))[0]) as $j |
    select($s != null and $j != null) |
    "  \($s.load) vs \($other): \(f(if $j.forwarded_pkts_per_cpu_s then $s.forwarded_pkts_per_cpu_s / $j.forwarded_pkts_per_cpu_s else null end; 2))x per CPU-s, p99 \(f($s.latency_p99_ms; 2)) vs \(f($j.latency_p99_ms; 2)) ms")
' "$RESULTS"
