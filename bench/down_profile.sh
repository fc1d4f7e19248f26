#!/usr/bin/env bash
# bench/down_profile.sh: where the time of `rollback --steps N` goes, in
# load-robust figures (issue 13, "200 down"), next to the psql floor (one
# psql -f of the downs, BEGIN / DROP TABLE / COMMIT each):
#   1. server time per migration, per connection (application_name) and
#      statement kind, split into parse / bind / execute (log_min_duration_statement = 0)
#   2. round trips per migration and connection (bench/delay_proxy.py's turns)
#   3. client CPU, user+sys (/usr/bin/time), median of ROUNDS
#   4. instructions (valgrind --tool=callgrind, total Ir) of one rollback (CALLGRIND=0 skips)
# Starts its own throwaway server (tests/with_pg.sh; BENCH_DURABLE=1: fsync and
# synchronous_commit on). Prints Markdown on stdout. Env: MIGRATE_BIN
# (default build/migrate-lua), N (200), ROUNDS (5), CALLGRIND (1), BEFORE_BIN
# (another binary: an A/B of the two over DELAY_MS of latency each way).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if [ -z "${MIGRATE_TEST_PGDATA:-}" ]; then
  [ "${BENCH_DURABLE:-}" = 1 ] && export MIGRATE_TEST_PG_DURABLE=1
  exec "$root/tests/with_pg.sh" "$0" "$@"
fi
BIN=${MIGRATE_BIN:-$root/build/migrate-lua}
N=${N:-200}
ROUNDS=${ROUNDS:-5}
CALLGRIND=${CALLGRIND:-1}
PSQL=$MIGRATE_TEST_PG_BIN/psql
tmp=$(mktemp -d /tmp/mldown.XXXXXX)
proxy_pid=""
# shellcheck disable=SC2317
cleanup() {
  set +e
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
"$here/gen.sh" "$tmp" "$N"
admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d postgres "$@" >/dev/null; }
fresh() {   # fresh() DB: a database with the N migrations applied (migrate-lua) or the floor's tables (psql)
  admin -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
  if [ "${2:-ml}" = ml ]; then
    "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d "dbname=$1" --quiet run >/dev/null
  else
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$1" -f "$tmp/floor.sql" >/dev/null
  fi
  admin -c CHECKPOINT
}
ml_down() { "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d "$1" --quiet rollback --steps "$N" >/dev/null; }
pg_down() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$1" -f "$tmp/floor_down.sql" >/dev/null; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "## rollback --steps $N: where the time goes (bench/down_profile.sh)"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), PostgreSQL" \
  "$("$PSQL" -X -At -d postgres -c 'show server_version')," \
  "fsync=$("$PSQL" -X -At -d postgres -c 'show fsync'), binary $BIN."
echo

# ---- 1. server time ----------------------------------------------------
log=$MIGRATE_TEST_TMP/server.log
server_time() {   # server_time LABEL CMD...: runs CMD with every statement's duration logged
  admin -c "ALTER SYSTEM SET log_min_duration_statement = 0" -c "ALTER SYSTEM SET log_line_prefix = '@%a|'" \
    -c "SELECT pg_reload_conf()"
  sleep 0.2
  local label=$1 from
  shift
  from=$(wc -c <"$log")
  "$@"
  admin -c "ALTER SYSTEM RESET log_min_duration_statement" -c "ALTER SYSTEM RESET log_line_prefix" \
    -c "SELECT pg_reload_conf()"
  sleep 0.2
  tail -c +"$((from + 1))" "$log" >"$tmp/$label.srv"
}
fresh p_ml; fresh p_pg pg
server_time ml ml_down dbname=p_ml
server_time pg pg_down p_pg
python3 - "$tmp/ml.srv" "$tmp/pg.srv" "$N" <<'EOF'
import re, sys, collections
n = int(sys.argv[3])
pat = re.compile(r'^@([^|]*)\|LOG:  duration: ([0-9.]+) ms  (statement|parse|bind|execute) ?([^:]*): (.*)$')
def kind(sql):
    s = sql.strip()
    w = s.split()
    if not w: return "?"
    head = " ".join(w[:3])
    if s.startswith("SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks"): return "lock proof"
    if "EXISTS (SELECT 1 FROM pg_catalog.pg_locks" in s and "found" in s: return "look (ANY_HOLDER)"
    if s.startswith("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks"): return "look (ANY_HOLDER)"
    if s.startswith("WITH me AS"): return "look (HOLDERS)"
    if s.startswith("EXECUTE "): return "EXECUTE " + w[1].split("(")[0]
    if w[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK", "SET", "DROP", "CREATE", "ALTER"): return " ".join(w[:2])[:40]
    if w[0].upper() in ("INSERT", "DELETE"): return " ".join(w[:3])[:60]
    return head[:60]
for path, who in ((sys.argv[1], "migrate-lua"), (sys.argv[2], "psql")):
    agg = collections.defaultdict(lambda: [0, 0.0])
    tot = collections.defaultdict(float)
    for line in open(path, errors="replace"):
        m = pat.match(line.rstrip("\n"))
        if not m: continue
        app, ms, phase, name, sql = m.groups()
        if app == "psql" and who != "psql": continue
        if who == "psql" and app != "psql": continue
        k = kind(sql)
        if k.startswith("DROP TABLE") or k.startswith("CREATE"): k = k.split()[0] + " " + k.split()[1]
        agg[(app, k, phase)][0] += 1
        agg[(app, k, phase)][1] += float(ms)
        tot[app] += float(ms)
    print("### server time: %s (ms per migration; calls in %d migrations)" % (who, n))
    print()
    print("| connection | statement | phase | calls | ms total | µs per migration |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for (app, k, phase), (c, ms) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print("| %s | %s | %s | %d | %.1f | %.0f |" % (app, k, phase, c, ms, ms * 1000 / n))
    for app, ms in sorted(tot.items()):
        print("| **%s** | **all** | | | **%.1f** | **%.0f** |" % (app, ms, ms * 1000 / n))
    print()
EOF

# ---- 2. round trips ----------------------------------------------------
# turns: how often a client sent after the server had answered (delay_proxy.py).
# It also counts a send that did not wait (a pipeline's next command sent after
# earlier answers came back). BEFORE_BIN=path adds an A/B over DELAY_MS (2) of
# latency each way, alternating the two binaries AB_ROUNDS (4) times: the wall
# time per migration each side, whose difference is the waits it saves.
start_proxy() {   # start_proxy DELAY_MS TURNS_FILE: sets port, proxy_pid
  port=$((40000 + RANDOM % 20000))
  : >"$2"
  python3 "$here/delay_proxy.py" "$port" "$MIGRATE_TEST_TMP/.s.PGSQL.$PGPORT" "$1" "$2" >"$tmp/proxy.out" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 50); do grep -q ready "$tmp/proxy.out" 2>/dev/null && break; sleep 0.1; done
}
stop_proxy() { kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""; }
start_proxy 0 "$tmp/turns"
fresh p_ml; fresh p_pg pg
via="host=127.0.0.1 port=$port sslmode=disable gssencmode=disable"
ml_down "$via dbname=p_ml"
PGHOST=127.0.0.1 PGPORT=$port PGSSLMODE=disable PGGSSENCMODE=disable pg_down p_pg
sleep 0.3
stop_proxy
echo "### round trips per migration (bench/delay_proxy.py turns ÷ $N)"
echo
echo "| connection | turns | per migration |"
echo "| --- | ---: | ---: |"
awk -v n="$N" '{t[$1] += $2} END {for (a in t) printf "| %s | %d | %.2f |\n", a, t[a], t[a] / n}' "$tmp/turns" | sort
echo
if [ -n "${BEFORE_BIN:-}" ]; then
  DELAY_MS=${DELAY_MS:-2}
  start_proxy "$DELAY_MS" "$tmp/turns_ab"
  via="host=127.0.0.1 port=$port sslmode=disable gssencmode=disable"
  declare -a AB_B AB_A
  for ((r = 1; r <= ${AB_ROUNDS:-4}; r++)); do
    for side in B A; do
      bin=$BIN; [ "$side" = B ] && bin=$BEFORE_BIN
      fresh p_ab
      t0=${EPOCHREALTIME/[.,]/}
      "$bin" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d "$via dbname=p_ab" --quiet rollback --steps "$N" >/dev/null
      t1=${EPOCHREALTIME/[.,]/}
      if [ "$side" = B ]; then AB_B[r]=$((t1 - t0)); else AB_A[r]=$((t1 - t0)); fi
    done
  done
  stop_proxy
  b=$(med "${AB_B[@]}") a=$(med "${AB_A[@]}")
  echo "A/B over ${DELAY_MS} ms each way (median of ${AB_ROUNDS:-4} alternating rounds): before $((b / 1000)) ms," \
    "after $((a / 1000)) ms for $N downs; $(awk -v b="$b" -v a="$a" -v n="$N" 'BEGIN {printf "%.2f", (b - a) / n / 1000}') ms" \
    "less per migration (rounds before: ${AB_B[*]}; after: ${AB_A[*]} µs)."
  echo
fi

# ---- 3. client CPU -----------------------------------------------------
declare -a C_ML C_PG
for ((r = 1; r <= ROUNDS; r++)); do
  fresh p_ml; fresh p_pg pg
  /usr/bin/time -f '%U %S' -o "$tmp/t" "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d dbname=p_ml --quiet \
    rollback --steps "$N" >/dev/null
  C_ML[r]=$(awk '{printf "%d", ($1 + $2) * 1000}' "$tmp/t")
  /usr/bin/time -f '%U %S' -o "$tmp/t" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d p_pg -f "$tmp/floor_down.sql" >/dev/null
  C_PG[r]=$(awk '{printf "%d", ($1 + $2) * 1000}' "$tmp/t")
done
echo "### client CPU (user+sys, median of $ROUNDS)"
echo
echo "migrate-lua rollback: $(med "${C_ML[@]}") ms (rounds: ${C_ML[*]}); psql: $(med "${C_PG[@]}") ms (rounds: ${C_PG[*]})"
echo

# ---- 4. instructions ---------------------------------------------------
if [ "$CALLGRIND" = 1 ]; then
  fresh p_ml
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$BIN" --dir "$tmp/migrations" \
    --log-file "$tmp/ml.log" -d dbname=p_ml --quiet rollback --steps "$N" >/dev/null 2>"$tmp/cg.err"
  ir=$(awk '/^summary:/ {print $2}' "$tmp/cg.out")
  echo "### instructions (callgrind)"
  echo
  echo "migrate-lua rollback --steps $N: $(awk -v i="$ir" 'BEGIN {printf "%.1f", i / 1e6}') M instructions" \
    "($(awk -v i="$ir" -v n="$N" 'BEGIN {printf "%.2f", i / n / 1e6}') M per migration)"
  echo
  if [ -n "${CG_KEEP:-}" ]; then cp "$tmp/cg.out" "$CG_KEEP"; fi
fi
