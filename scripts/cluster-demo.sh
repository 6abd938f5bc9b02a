#!/usr/bin/env bash
# Three lienthong brokers sharing one throw-away PostgreSQL, all on 127.0.0.1 (README "Cluster").
# PostgreSQL comes from Debian's binaries (scripts/install-deps.sh), initialised in a temp dir and run as an
# unprivileged user (PostgreSQL refuses to run as root; as root this runs it as `nobody`). Prints curl lines
# for each broker; Ctrl-C stops the brokers and PostgreSQL and removes the temp dir.
#
#   scripts/cluster-demo.sh              # brokers on 8443/8444, 8453/8454, 8463/8464, PostgreSQL on 55432
#   BASE_PORT=9443 PGPORT=56432 CITIZENS=1000 scripts/cluster-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
base_port=${BASE_PORT:-8443}
pg_port=${PGPORT:-55432}
citizens=${CITIZENS:-10000}
bin=${LIENTHONG_BIN:-target/release/lienthong}
[ -x "$bin" ] || cargo build --release --locked

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ]; then
  command -v initdb >/dev/null || { echo "PostgreSQL is not installed: run scripts/install-deps.sh" >&2; exit 1; }
  pg_bin=$(dirname "$(command -v initdb)")
fi

work=$(mktemp -d /tmp/lienthong-cluster.XXXXXX)
as_pg_user=()
if [ "$(id -u)" -eq 0 ]; then
  chown nobody "$work"
  as_pg_user=(runuser -u nobody --)
fi
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "stopping the brokers and PostgreSQL"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  "${as_pg_user[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

(cd "$work" && "${as_pg_user[@]}" "$pg_bin/initdb" -D "$work/pg" -U lienthong -A trust -E UTF8 >/dev/null)
(cd "$work" && "${as_pg_user[@]}" "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1" start >/dev/null)
url="postgres://lienthong@127.0.0.1:$pg_port/postgres"
echo "PostgreSQL: $url (log: $work/pg/server.log)"

certs="$work/certs"
"$bin" certs init --dir "$certs" --client moh --client pccovid --client dvc --client admin >/dev/null
"$bin" db migrate --database "$url"
"$bin" db seed --database "$url" --citizens "$citizens"

for i in 0 1 2; do
  agency=$((base_port + 10 * i))
  admin=$((agency + 1))
  cat >"$work/node-$i.toml" <<TOML
[agency_listener]
addr = "127.0.0.1:$agency"
[admin_listener]
addr = "127.0.0.1:$admin"
[tls]
ca_bundle = "$certs/ca.pem"
server_cert = "$certs/server.pem"
server_key = "$certs/server.key"
crls = ["$certs/crl.pem"]
admin_certs = ["$certs/admin.pem"]
[storage]
data_dir = "$work/node-$i"
backend = "postgres"
[storage.postgres]
url = "$url"
node_name = "node-$i"
TOML
  "$bin" serve --config "$work/node-$i.toml" 2>"$work/node-$i.log" &
  pids+=($!)
done

admin_args=(--admin-addr "127.0.0.1:$((base_port + 1))" --cacert "$certs/ca.pem" --cert "$certs/admin.pem" --key "$certs/admin.key")
for _ in $(seq 100); do
  "$bin" agency list "${admin_args[@]}" >/dev/null 2>&1 && break
  sleep 0.2
done
# Registered once, on node 0: every node follows the shared registry.
for code in moh pccovid dvc; do
  "$bin" agency add "$code" --name "$code" --cert-file "$certs/$code.pem" "${admin_args[@]}" >/dev/null
done

curl_as() { echo "curl --cacert $certs/ca.pem --cert $certs/$1.pem --key $certs/$1.key"; }
id=001090000001   # one of the seeded citizens
echo
echo "Three brokers share $url. Try, on any of them:"
for i in 0 1 2; do
  agency=$((base_port + 10 * i))
  admin=$((agency + 1))
  echo
  echo "  # node-$i (log: $work/node-$i.log)"
  echo "  $(curl_as dvc) 'https://127.0.0.1:$agency/v1/citizens/$id?purpose=public-service-prefill'"
  echo "  $(curl_as pccovid) 'https://127.0.0.1:$agency/v1/citizens/$id?purpose=covid-qr-status'"
  echo "  $(curl_as admin) -X POST https://127.0.0.1:$admin/admin/v1/agencies/pccovid/suspend   # refused on every node"
  echo "  $(curl_as admin) -X POST https://127.0.0.1:$admin/admin/v1/agencies/pccovid/resume"
done
echo
echo "  $bin audit verify --database $url"
echo
echo "Stop with Ctrl-C."
wait
