#!/usr/bin/env bash
# The README's test command: install what the tests need beyond the Rust toolchain (scripts/install-deps.sh:
# chromium and NSS tools for the console test, PostgreSQL for the cluster tests, openssl, curl), then run
# the whole suite. Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test console`).
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --for-tests
exec cargo test --locked "$@"
