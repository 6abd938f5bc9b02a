#!/usr/bin/env bash
# Bounded fuzz run of every target in fuzz/ (CI smoke): FUZZ_SECONDS each (default 20).
# Stable Rust only: cargo-fuzz needs nightly flags, RUSTC_BOOTSTRAP=1 allows them; no sanitizer (our code
# forbids unsafe; the smoke looks for panics, overflows and hangs). Seeds: fuzz/corpus/<target>/seed-* and,
# when present, connectors/examples/*.json (JSON decoder) and *.xml (XML decoder).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: run scripts/install-deps.sh" >&2; exit 1; }

seed() { # seed <target> <glob>: copy matching example files into the target's corpus
  local target=$1 pattern=$2 f
  [ -d "fuzz/corpus/$target" ] || return 0
  for f in $pattern; do
    [ -f "$f" ] && cp "$f" "fuzz/corpus/$target/example-$(basename "$f")"
  done
  return 0
}

targets=$(cd fuzz && cargo fuzz list)
for target in $targets; do
  mkdir -p "fuzz/corpus/$target"
done
shopt -s nullglob
seed json_decode "connectors/examples/*.json"
seed xml_decode "connectors/examples/*.xml"

cd fuzz
cargo fetch --locked  # fuzz/Cargo.lock is committed and current: the build leaves the clone clean
cargo fuzz build --sanitizer none
log=$(mktemp)
for target in $targets; do
  echo "== fuzz $target for ${seconds}s"
  if ! cargo fuzz run --sanitizer none "$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|Done [0-9]+ runs" "$log" || true
done
rm -f "$log"
