#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: Debian packages (Chromium, coturn, nftables, ffmpeg,
# conntrack, curl, openssl),
# the e2e tests' npm packages, and aiortc from PyPI. Safe to run again; does nothing when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v turnserver >/dev/null || need_apt+=(coturn)
command -v turnutils_uclient >/dev/null || need_apt+=(coturn)
command -v nft >/dev/null || need_apt+=(nftables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
command -v conntrack >/dev/null || need_apt+=(conntrack)   # netlab test 8 reads the NATs' flows
command -v curl >/dev/null || need_apt+=(curl)             # netlab reads /metrics inside the lab
command -v openssl >/dev/null || need_apt+=(openssl)       # netlab makes a TURN-over-TLS certificate
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

for pkg in tests/*/package.json; do
  [ -f "$pkg" ] || continue
  dir=$(dirname "$pkg")
  if [ ! -d "$dir/node_modules/playwright-core" ]; then
    echo "install-deps: npm ci in $dir"
    (cd "$dir" && { [ -f package-lock.json ] && npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent; })
  fi
done

if ! python3 -c 'import aiortc' 2>/dev/null; then
  echo "install-deps: pip install aiortc"
  python3 -m pip install -q --only-binary=:all: aiortc >/dev/null
fi
