#!/usr/bin/env bash
# Bounded fuzzing of the STUN/TURN message parser (crates/stun/fuzz, libFuzzer via cargo-fuzz).
# Usage: scripts/fuzz.sh [seconds per target, default 60]
# Installs cargo-fuzz when missing. The machine's toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use
# the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")/../crates/stun/fuzz"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
  echo "== fuzz $target for ${secs}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
