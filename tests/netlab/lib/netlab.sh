#!/usr/bin/env bash
# Switchboard NAT-traversal lab: network namespaces joined by veth pairs, with real NAT (nftables masquerade).
# Needs root, iproute2 and nftables. Used by tests/netlab/*.test.mjs and by hand (docs/nat-traversal.md).
#
#                         P-pub  (the "internet": bridge br0, 203.0.113.1/24, runs switchboard serve)
#                  203.0.113.10 |                       | 203.0.113.20
#                         P-ra  (NAT router A)     P-rb  (NAT router B)
#                     10.1.0.1  |                       | 10.2.0.1
#                         P-a   (client A 10.1.0.2)  P-b   (client B 10.2.0.2)
#
# Commands (P is a prefix naming this lab's namespaces, e.g. sbnl-demo; everything it creates starts with it):
#   netlab.sh up P                        create the five namespaces, links, addresses, routes; both NATs "eim"
#   netlab.sh nat P a|b MODE [udp-block|web-only]
#                                         set router a/b's NAT: MODE = eim (endpoint-independent mapping, port
#                                         preserving) or symmetric (masquerade random,fully-random: a new random
#                                         port per destination). udp-block: the router drops all UDP from its
#                                         client (only TCP leaves, e.g. TURN over TCP). web-only: a corporate
#                                         firewall — no UDP, and TCP only to ports 443 and 8080 (signaling and
#                                         TURN over TLS on 443 get out; TURN over TCP on 3478 does not).
#   netlab.sh readdress P a|b NEWIP       move router a/b's public address to NEWIP (in 203.0.113.0/24); the old
#                                         address is removed, which also drops the NAT's existing mappings.
#   netlab.sh shape P a|b RATE|off        limit what router a/b forwards to its client (its LAN egress, i.e. the
#                                         client's downlink) to RATE (tc tbf, e.g. 300kbit or 2mbit); off lifts it
#   netlab.sh loss P a|b PERCENT|off      drop PERCENT % of the UDP router a/b forwards to its client at random
#                                         (nftables numgen: loss on the client's downlink); off lifts it
#   netlab.sh exec P NODE CMD...          run CMD in namespace P-NODE (NODE: pub, ra, rb, a, b)
#   netlab.sh status P                    addresses and NAT rules of the lab
#   netlab.sh down P                      kill whatever still runs in the lab's namespaces, delete them
#
# Every router filters like a real home NAT: nothing from the public side reaches the router or the client unless
# it belongs to a mapping the client opened (address-and-port-dependent filtering, Linux conntrack). New inbound
# packets are dropped *before* conntrack confirms an entry for them, so an early hole-punching packet from the
# peer cannot steal the mapping's port (which would break endpoint-independent mapping on Linux).
set -euo pipefail

PUB_NET=203.0.113
SERVER_IP=$PUB_NET.1

die() { echo "netlab: $*" >&2; exit 1; }

side_vars() { # side -> router ns suffix, client ns suffix, public ip, lan prefix
  case "$1" in
    a) R=ra; C=a; WAN_IP=$PUB_NET.10; LAN=10.1.0 ;;
    b) R=rb; C=b; WAN_IP=$PUB_NET.20; LAN=10.2.0 ;;
    *) die "side must be a or b, not '$1'" ;;
  esac
}

check_prefix() {
  [[ "${1:-}" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$ ]] || die "bad or missing prefix '${1:-}' (letters, digits, - and _)"
}

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

quiet_ipv6() { # no IPv6 noise in candidates; loopback up
  nsx "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1 || true
  ip -n "$1" link set lo up
}

nat_rules() { # ns mode udpblock
  local ns=$1 mode=$2 block=$3 masq
  case "$mode" in
    eim) masq="masquerade persistent" ;;
    symmetric) masq="masquerade random,fully-random" ;;
    *) die "NAT mode must be eim or symmetric, not '$mode'" ;;
  esac
  local udp_rule=""
  case "$block" in
    udp-block) udp_rule='iifname "lan" meta l4proto udp counter drop' ;;
    web-only) udp_rule='iifname "lan" meta l4proto udp counter drop
    iifname "lan" tcp dport != { 443, 8080 } counter drop' ;;
    ""|none) ;;
    *) die "firewall must be udp-block, web-only or none, not '$block'" ;;
  esac
  nsx "$ns" nft -f - <<EOF
table ip netlab
delete table ip netlab
table ip netlab {
  chain nat_post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $masq
  }
  chain in_filter {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new counter drop
  }
  chain fwd_filter {
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state new counter drop
    $udp_rule
  }
}
EOF
}

cmd_up() {
  local P=$1
  ip netns list | grep -q "^$P-pub\b" && die "namespace $P-pub already exists (netlab.sh down $P)"
  trap 'echo "netlab: up failed, removing $P" >&2; cmd_down "$P"' ERR
  ip netns add "$P-pub"
  quiet_ipv6 "$P-pub"
  ip -n "$P-pub" link add br0 type bridge
  ip -n "$P-pub" addr add $SERVER_IP/24 dev br0
  ip -n "$P-pub" link set br0 up
  for s in a b; do
    side_vars $s
    ip netns add "$P-$R"
    ip netns add "$P-$C"
    quiet_ipv6 "$P-$R"
    quiet_ipv6 "$P-$C"
    # router wan <-> bridge port in pub
    ip link add wan netns "$P-$R" type veth peer name "port$s" netns "$P-pub"
    ip -n "$P-pub" link set "port$s" master br0 up
    ip -n "$P-$R" addr add "$WAN_IP/24" dev wan
    ip -n "$P-$R" link set wan up
    # router lan <-> client eth0
    ip link add lan netns "$P-$R" type veth peer name eth0 netns "$P-$C"
    ip -n "$P-$R" addr add "$LAN.1/24" dev lan
    ip -n "$P-$R" link set lan up
    ip -n "$P-$C" addr add "$LAN.2/24" dev eth0
    ip -n "$P-$C" link set eth0 up
    ip -n "$P-$C" route add default via "$LAN.1"
    nsx "$P-$R" sysctl -qw net.ipv4.ip_forward=1
    nat_rules "$P-$R" eim none
  done
  trap - ERR
}

cmd_down() {
  local P=$1 n pids
  # Whatever still runs inside the lab's own namespaces was started for the lab (server, browsers and their
  # helpers): kill it, or the namespace lives on after `ip netns del`.
  for n in a b ra rb pub; do
    pids=$(ip netns pids "$P-$n" 2>/dev/null || true)
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
  done
  for n in a b ra rb pub; do
    ip netns del "$P-$n" 2>/dev/null || true
  done
}

cmd_status() {
  local P=$1 n
  for n in pub ra a rb b; do
    echo "== $P-$n"
    ip -n "$P-$n" -br addr 2>/dev/null | grep -v '^lo' || echo "(missing)"
    case $n in ra|rb) nsx "$P-$n" nft list table ip netlab 2>/dev/null | grep -E 'masquerade|udp' | sed 's/^ */   /' ;; esac
  done
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) check_prefix "${1:-}"; cmd_up "$1" ;;
  down) check_prefix "${1:-}"; cmd_down "$1" ;;
  nat)
    check_prefix "${1:-}"; side_vars "${2:-}"
    nat_rules "$1-$R" "${3:-eim}" "${4:-none}" ;;
  readdress)
    check_prefix "${1:-}"; side_vars "${2:-}"
    [[ "${3:-}" =~ ^203\.0\.113\.([0-9]+)$ ]] && (( BASH_REMATCH[1] > 1 && BASH_REMATCH[1] < 255 )) \
      || die "new address must be in 203.0.113.2-254"
    old=$(ip -n "$1-$R" -4 -o addr show dev wan | awk '{print $4}')
    # Keep the new address when the old (primary) one goes: without promote_secondaries, deleting the primary
    # address also deletes the secondaries of its subnet.
    nsx "$1-$R" sysctl -qw net.ipv4.conf.wan.promote_secondaries=1
    ip -n "$1-$R" addr add "$3/24" dev wan
    for a in $old; do ip -n "$1-$R" addr del "$a" dev wan; done ;;
  shape)
    check_prefix "${1:-}"; side_vars "${2:-}"
    if [[ "${3:-}" == off ]]; then
      nsx "$1-$R" tc qdisc del dev lan root 2>/dev/null || true
    else
      [[ "${3:-}" =~ ^[0-9]+(kbit|mbit)$ ]] || die "rate must be like 300kbit or 2mbit, or off"
      # A 100 ms queue, then drops: what a congested home link does to a downlink.
      nsx "$1-$R" tc qdisc replace dev lan root tbf rate "$3" burst 16kb latency 100ms
    fi ;;
  loss)
    check_prefix "${1:-}"; side_vars "${2:-}"
    nsx "$1-$R" nft delete table ip netlab_loss 2>/dev/null || true
    if [[ "${3:-}" != off ]]; then
      [[ "${3:-}" =~ ^[0-9]+$ && "$3" -le 100 ]] || die "loss must be a whole percentage like 5, or off"
      # Random loss of the UDP the router forwards to its client (nftables numgen; no netem needed).
      nsx "$1-$R" nft -f - <<EOF
table ip netlab_loss {
  chain random_drop {
    type filter hook forward priority filter - 1; policy accept;
    oifname "lan" meta l4proto udp numgen random mod 100 < $3 counter drop
  }
}
EOF
    fi ;;
  exec) check_prefix "${1:-}"; P=$1; N=$2; shift 2; exec ip netns exec "$P-$N" "$@" ;;
  status) check_prefix "${1:-}"; cmd_status "$1" ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
