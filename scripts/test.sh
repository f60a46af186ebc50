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

e2e_passed=0; e2e_failed=0
if ls tests/e2e/*.test.mjs >/dev/null 2>&1; then
  echo "== browser end-to-end tests (tests/e2e)"
  set +e
  node --test --test-concurrency=1 --test-reporter=spec tests/e2e/ 2>&1 | tee /tmp/switchboard-e2e.log
  set -e
  e2e_passed=$(grep -Eo '^ℹ pass [0-9]+' /tmp/switchboard-e2e.log | awk '{s+=$3} END {print s+0}')
  e2e_failed=$(grep -Eo '^ℹ fail [0-9]+' /tmp/switchboard-e2e.log | awk '{s+=$3} END {print s+0}')
fi

lab_passed=0; lab_failed=0
if ls tests/netlab/*.test.mjs >/dev/null 2>&1; then
  echo "== NAT-traversal lab (tests/netlab)"
  set +e
  node --test --test-concurrency=1 --test-reporter=spec tests/netlab/ 2>&1 | tee /tmp/switchboard-netlab.log
  set -e
  lab_passed=$(grep -Eo '^ℹ pass [0-9]+' /tmp/switchboard-netlab.log | awk '{s+=$3} END {print s+0}')
  lab_failed=$(grep -Eo '^ℹ fail [0-9]+' /tmp/switchboard-netlab.log | awk '{s+=$3} END {print s+0}')
fi

passed=$((rust_passed + e2e_passed + lab_passed)); failed=$((rust_failed + e2e_failed + lab_failed))
echo "rust: ${rust_passed} passed, ${rust_failed} failed; e2e: ${e2e_passed} passed, ${e2e_failed} failed; netlab: ${lab_passed} passed, ${lab_failed} failed"
echo "${passed} passed, ${failed} failed"
[ "$cargo_status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
