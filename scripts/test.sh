#!/usr/bin/env bash
# Runs every test of the project: lint, unit and cross-process Rust tests, browser end-to-end tests.
# Installs what it needs first (scripts/install-deps.sh). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo build"
cargo build --workspace --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export SWITCHBOARD_BIN="$target_dir/debug/switchboard"

echo "== cargo test"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/switchboard-cargo-test.log
cargo_status=${PIPESTATUS[0]}
set -e
rust_passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' /tmp/switchboard-cargo-test.log | awk '{s+=$4} END {print s+0}')
rust_failed=$(grep -Eo '[0-9]+ failed' /tmp/switchboard-cargo-test.log | awk '{s+=$1} END {print s+0}')

# Cross-process suites driven by Node (browsers, native CLI, NAT lab): every tests/<suite>/*.test.mjs.
node_passed=0; node_failed=0; summary=""
for suite in e2e native sfu netlab; do
  ls tests/$suite/*.test.mjs >/dev/null 2>&1 || continue
  echo "== tests/$suite"
  set +e
  node --test --test-concurrency=1 --test-reporter=spec tests/$suite/ 2>&1 | tee /tmp/switchboard-$suite.log
  set -e
  p=$(grep -Eo '^ℹ pass [0-9]+' /tmp/switchboard-$suite.log | awk '{s+=$3} END {print s+0}')
  f=$(grep -Eo '^ℹ fail [0-9]+' /tmp/switchboard-$suite.log | awk '{s+=$3} END {print s+0}')
  node_passed=$((node_passed + p)); node_failed=$((node_failed + f))
  summary="$summary; $suite: $p passed, $f failed"
done

passed=$((rust_passed + node_passed)); failed=$((rust_failed + node_failed))
echo "rust: ${rust_passed} passed, ${rust_failed} failed${summary}"
echo "${passed} passed, ${failed} failed"
[ "$cargo_status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
