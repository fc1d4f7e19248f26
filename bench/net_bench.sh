#!/usr/bin/env bash
# bench/net_bench.sh: migrate-lua over a network with 2 ms of round-trip
# latency, next to the psql floor and dbmate (issue 13). Builds nothing:
# MIGRATE_BIN (default build-bench/migrate-lua, which bench/run.sh builds).
# Starts its own throwaway server (tests/with_pg.sh).
#
# The script makes, and removes on exit (trap), a network namespace with one
# end of a veth pair; `tc netem delay 1ms` on each end (2 ms per round trip);
# needs root and iproute2. Where the kernel has no netem (containers), it
# starts bench/delay_proxy.py instead (a loopback delay proxy) and says so.
# The server listens on the host end's address (and its private unix socket,
# nothing else); every client runs inside the namespace, so each of its round
# trips crosses the delay.
# Env: ROUNDS (5), N (200), RESULTS (bench/RESULTS.md; "-" = print only),
# BENCH_CACHE (bench/.cache, dbmate from npm), DELAY_MS (1 each way).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if [ -z "${MIGRATE_TEST_PGDATA:-}" ]; then exec "$root/tests/with_pg.sh" "$0" "$@"; fi

BIN=${MIGRATE_BIN:-$root/build-bench/migrate-lua}
ROUNDS=${ROUNDS:-5}
N=${N:-200}
DELAY_MS=${DELAY_MS:-1}
RESULTS=${RESULTS:-$here/RESULTS.md}
CACHE=${BENCH_CACHE:-$here/.cache}
PG_BIN=$MIGRATE_TEST_PG_BIN
PSQL=$PG_BIN/psql
[ -x "$BIN" ] || { echo "net_bench.sh: no binary at $BIN (run bench/run.sh once, or set MIGRATE_BIN)" >&2; exit 2; }

DBMATE=$CACHE/npm/node_modules/.bin/dbmate
if [ ! -x "$DBMATE" ]; then
  mkdir -p "$CACHE/npm"
  npm install --prefix "$CACHE/npm" --no-audit --no-fund --silent dbmate >&2
fi
real=$(ls "$CACHE"/npm/node_modules/@dbmate/*/bin/dbmate 2>/dev/null | head -1 || true)
[ -n "$real" ] && DBMATE=$real

# ---- the network ---------------------------------------------------------
# Preferred: a namespace with one end of a veth pair, netem on both ends,
# the server on the host end's address. Where the kernel has no netem qdisc
# (a container without sch_netem), bench/delay_proxy.py instead: a loopback
# TCP proxy to the server's unix socket holding each chunk DELAY_MS each way.
id=$$
ns=mlnet$id host_if=mlh$id ns_if=mln$id
net=10.213.$((id % 250)).
tmp=$(mktemp -d /tmp/mlnet.XXXXXX)
proxy_pid=""
# shellcheck disable=SC2317
cleanup() {
  set +e
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null      # takes its end of the veth pair with it
  ip link del "$host_if" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
as_pg() { if [ -n "${MIGRATE_TEST_PG_RUNAS:-}" ]; then runuser -u "$MIGRATE_TEST_PG_RUNAS" -- "$@"; else "$@"; fi; }
netns_up() {
  [ "$(id -u)" = 0 ] && command -v tc >/dev/null || return 1
  ip netns add "$ns" || return 1
  ip link add "$host_if" type veth peer name "$ns_if" &&
    ip link set "$ns_if" netns "$ns" &&
    ip addr add "${net}1/24" dev "$host_if" && ip link set "$host_if" up &&
    ip netns exec "$ns" ip addr add "${net}2/24" dev "$ns_if" &&
    ip netns exec "$ns" ip link set "$ns_if" up && ip netns exec "$ns" ip link set lo up &&
    tc qdisc add dev "$host_if" root netem delay "${DELAY_MS}ms" 2>/dev/null &&
    ip netns exec "$ns" tc qdisc add dev "$ns_if" root netem delay "${DELAY_MS}ms" 2>/dev/null || {
      ip netns del "$ns" 2>/dev/null; ip link del "$host_if" 2>/dev/null; return 1; }
  echo "host all all ${net}0/24 trust" >>"$MIGRATE_TEST_PGDATA/pg_hba.conf"
  echo "listen_addresses = '${net}1'" >>"$MIGRATE_TEST_PGDATA/postgresql.conf"
  (cd "$MIGRATE_TEST_TMP" && as_pg "$MIGRATE_TEST_PG_BIN/pg_ctl" -D "$MIGRATE_TEST_PGDATA" \
    -l "$MIGRATE_TEST_TMP/server.log" -w restart >/dev/null)
}
if netns_up; then
  how="a network namespace + veth pair, \`tc netem delay ${DELAY_MS}ms\` on each end, TCP to the server on the host end"
  in_ns() { ip netns exec "$ns" "$@"; }
  host=${net}1 port=$PGPORT
  rtt=$(in_ns ping -c 3 -q "$host" 2>/dev/null | awk -F/ '/rtt/ {print $5}')
else
  how="no netem in this kernel (container), so bench/delay_proxy.py: a loopback TCP proxy to the server's unix socket holding every chunk ${DELAY_MS} ms each way (Python asyncio; its own CPU and epoll's 1 ms timer granularity add a little to every round trip, the same for every side)"
  in_ns() { "$@"; }
  host=127.0.0.1 port=$((PGPORT + 1))
  # $tmp/turns: each connection's round trips (delay_proxy.py), for the table's last line
  python3 "$here/delay_proxy.py" "$port" "$PGHOST/.s.PGSQL.$PGPORT" "$DELAY_MS" "$tmp/turns" >"$tmp/proxy.out" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do grep -q ready "$tmp/proxy.out" 2>/dev/null && break; sleep 0.05; done
  t0=${EPOCHREALTIME/[.,]/}
  for _ in 1 2 3 4 5 6 7 8 9 10; do "$PSQL" -X -At -d "host=$host port=$port dbname=postgres" -c 'select 1' >/dev/null; done
  t1=${EPOCHREALTIME/[.,]/}
  rtt="~$(awk -v u=$((t1 - t0)) 'BEGIN {printf "%.1f", u/10/1000}') ms per psql connect+query (not ping)"
  sleep 0.2; rm -f "$tmp/turns"   # the calibration's connections are not the workload's
fi
conn() { echo "host=$host port=$port user=$PGUSER dbname=$1 sslmode=disable"; }

admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d postgres "$@" >/dev/null; }
"$here/gen.sh" "$tmp" "$N"
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { printf '%s\n' "$@" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
pratio() { local -n x=$1 y=$2; local r; for r in "${!x[@]}"; do ratio "${x[r]}" "${y[r]}"; echo; done | median | xargs printf '%.2f'; }
timed() {
  local __t=$1; shift
  local t0 t1
  admin -c CHECKPOINT
  t0=${EPOCHREALTIME/[.,]/}
  in_ns "$@" >/dev/null 2>>"$tmp/stderr.log" || { echo "net_bench.sh: failed: $*" >&2; tail -20 "$tmp/stderr.log" >&2; exit 1; }
  t1=${EPOCHREALTIME/[.,]/}
  printf -v "$__t" '%d' $((t1 - t0))
}

declare -a ML PG DM
for ((r = 1; r <= ROUNDS; r++)); do
  admin -c "CREATE DATABASE n_ml" -c "CREATE DATABASE n_pg" -c "CREATE DATABASE n_dm"
  a() { timed "ML[r]" "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d "$(conn n_ml)" --quiet run; }
  b() { timed "PG[r]" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$(conn n_pg)" -f "$tmp/floor.sql"; }
  c() { timed "DM[r]" "$DBMATE" --url "postgres://$PGUSER@$host:$port/n_dm?sslmode=disable" \
          --migrations-dir "$tmp/dbmate" --no-dump-schema up; }
  case $((r % 3)) in 1) a; b; c ;; 2) b; c; a ;; 0) c; a; b ;; esac
  admin -c "DROP DATABASE n_ml" -c "DROP DATABASE n_pg" -c "DROP DATABASE n_dm"
  printf 'net round %d: migrate-lua %s ms, psql %s ms, dbmate %s ms\n' "$r" "$(ms "${ML[r]}")" "$(ms "${PG[r]}")" "$(ms "${DM[r]}")" >&2
done

verdict() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "met" : sprintf("**missed** (%.0f%% over)", (v/t-1)*100)}'; }
rm_=$(pratio ML PG) rd=$(pratio DM PG)
section=$tmp/section.md
{
  echo "<!-- bench:net:begin -->"
  echo "## Over a network: 2 ms round trip (issue 13)"
  echo
  echo "Run by \`bench/net_bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): $how (round trip: ${rtt:-?}); $N migrations up from empty, median of $ROUNDS rounds (order rotating), a fresh database per round and side. Fast cluster (fsync=off), so the network dominates. migrate-lua $("$BIN" --version | awk '{print $2}') at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'); load average $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| $N migrations up | time | ratio to psql | target | verdict |"
  echo "| --- | ---: | ---: | --- | --- |"
  echo "| psql floor (one process, BEGIN/COMMIT each) | $(ms "$(med "${PG[@]}")") ms | 1.00 | | |"
  echo "| dbmate up | $(ms "$(med "${DM[@]}")") ms | ${rd}× | | |"
  echo "| migrate-lua run | $(ms "$(med "${ML[@]}")") ms | ${rm_}× | ≤ 0.7× | $(verdict "$rm_" 0.7) |"
  if [ -s "$tmp/turns" ]; then
    echo
    awk -v n=$((ROUNDS * N)) '{t[$1] += $2} END {printf "Round trips per migration, counted by the proxy (the client sending after the server answered; each run'"'"'s connect and set-up spread over its %d migrations): migrate-lua main connection %.2f, its log connection %.2f (rows sent without waiting), psql %.2f.\n", n / '"$ROUNDS"', t["migrate-lua"] / n, t["migrate-lua_lock"] / n, t["psql"] / n}' "$tmp/turns"
  fi
  notes=$here/net-notes.md
  if [ -f "$notes" ]; then echo; cat "$notes"; fi
  echo "<!-- bench:net:end -->"
} >"$section"
cat "$section"
[ "$RESULTS" = "-" ] && exit 0
if grep -q '<!-- bench:net:begin -->' "$RESULTS"; then
  awk -v sec="$section" '
    $0 == "<!-- bench:net:begin -->" { while ((getline l < sec) > 0) print l; skip = 1; next }
    $0 == "<!-- bench:net:end -->" { skip = 0; next }
    !skip { print }' "$RESULTS" >"$tmp/results.new"
  cat "$tmp/results.new" >"$RESULTS"
else
  { echo; cat "$section"; } >>"$RESULTS"
fi
echo "wrote $RESULTS" >&2
