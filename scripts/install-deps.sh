#!/usr/bin/env bash
# Everything the build, the demo, the tests and CI need beyond the Rust toolchain. Idempotent.
# `scripts/install-deps.sh --for-tests` installs only what `cargo test` needs (scripts/test.sh uses it).
# The Rust toolchain itself (cargo, rustc, clippy, rustfmt) comes with the machine.
#  - curl, openssl: the demo's curl lines, PKCS#12 for the console test
#  - chromium, libnss3-tools (certutil, pk12util): the headless console test (tests/console.rs)
#  - postgresql (initdb, pg_ctl; Debian keeps them in /usr/lib/postgresql/<version>/bin): the cluster tests
#  - python3 + a venv in target/pyenv with openapi-spec-validator and schemathesis (scripts/schemathesis.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v certutil >/dev/null || need_apt+=(libnss3-tools)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt || true

# `--for-tests` (scripts/test.sh): the system packages above are all the tests need; stop here.
[ "${1:-}" = "--for-tests" ] && exit 0

# Python tools for the OpenAPI checks, in a venv under target/ (never the system Python).
venv=target/pyenv
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  mkdir -p target
  python3 -m venv "$venv" || { apt-get install -y -qq python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q 'openapi-spec-validator>=0.7' 'schemathesis>=4,<5'
fi
# The fuzz smoke (scripts/fuzz-smoke.sh) needs cargo-fuzz; built once, then reused.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
