#!/usr/bin/env bash
# The published catalogue against the running broker: start a demo broker on free ports, fetch
# GET /v1/catalogue, validate it with openapi-spec-validator (OpenAPI 3.1), then run schemathesis against
# it (bounded): no 5xx, every status, content type and body as the document says. XML connector bodies
# are opaque strings to it, hence `filter_too_much` is suppressed. Stops the broker at the end, whatever
# happens. Needs scripts/install-deps.sh (the Python venv in target/pyenv).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
target="${CARGO_TARGET_DIR:-target}"
venv=target/pyenv
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-20}"

work="$(mktemp -d)"
cargo build --locked --quiet
# A private copy: a shared target dir may be rebuilt by someone else while the demo runs.
cp "$target/debug/lienthong" "$work/lienthong"
bin="$work/lienthong"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
agency_port="$(free_port)"
admin_port="$(free_port)"
certs="$work/certs"
"$bin" demo --citizens 200 --certs-dir "$certs" --data-dir "$work/data" \
  --agency-addr "127.0.0.1:$agency_port" --admin-addr "127.0.0.1:$admin_port" >"$work/broker.log" 2>&1 &
pid=$!

curl_agency=(curl -sS --fail-with-body --cacert "$certs/ca.pem" --cert "$certs/dvc.pem" --key "$certs/dvc.key")
for _ in $(seq 1 100); do
  "${curl_agency[@]}" -o /dev/null "https://127.0.0.1:$agency_port/healthz" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/broker.log"; echo "the demo broker exited" >&2; exit 1; }
  sleep 0.2
done

mkdir -p target
doc=target/openapi.json
"${curl_agency[@]}" -o "$doc" "https://127.0.0.1:$agency_port/v1/catalogue"
echo "== openapi-spec-validator $doc"
"$venv/bin/openapi-spec-validator" "$doc"

# Every demo agency in turn: each is allowed different purposes, so together they reach every 2xx path.
status=0
for agency in dvc pccovid moh sms vneid; do
  echo "== schemathesis as $agency (max $max_examples examples per operation)"
  # Run from the temp folder: schemathesis keeps a .schemathesis/ cache in its working directory.
  # One worker: with two, hypothesis parses lambda sources from two threads at once and CPython 3.11.7
  # trips over its own AST recursion counter ("AST constructor recursion depth mismatch"), a tool crash.
  (cd "$work" && "$root/$venv/bin/schemathesis" run "$root/$doc" \
    --url "https://127.0.0.1:$agency_port" \
    --request-cert "$certs/$agency.pem" --request-cert-key "$certs/$agency.key" \
    --tls-verify "$certs/ca.pem" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$max_examples" --seed 2021 --workers 1 \
    --suppress-health-check filter_too_much \
    --generation-database none --no-color \
    --report junit --report-junit-path "$root/target/schemathesis-$agency.xml") || status=1
done
if [ "$status" -ne 0 ]; then
  echo "schemathesis found problems; broker log: $work/broker.log" >&2
  tail -n 50 "$work/broker.log" >&2
fi
exit "$status"
