#!/usr/bin/env bash
# Everything the build, the demo and the tests need beyond the Rust toolchain. Idempotent.
# The Rust toolchain itself (cargo, rustc, clippy, rustfmt) comes with the machine.
set -euo pipefail
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt || true
# The fuzz smoke (scripts/fuzz-smoke.sh) needs cargo-fuzz; built once, then reused.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
