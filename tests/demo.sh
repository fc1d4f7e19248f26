#!/usr/bin/env bash
# The README demo: the example migrations against the throwaway PostgreSQL
# that tests/with_pg.sh started (PGHOST/PGPORT point at it). Run as
#   tests/with_pg.sh tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MIGRATE_BUILD_DIR:-build}/migrate-lua
work=$(mktemp -d "${MIGRATE_TEST_TMP:-/tmp}/demo.XXXXXX")
export DATABASE_URL="host=$PGHOST port=$PGPORT user=${PGUSER:-postgres} dbname=postgres"
log="--log-file $work/migration-execution.log"

step() { printf '\n$ migrate-lua %s\n' "$*"; }
step show;      $bin $log show
step run;       $bin $log run
step show;      $bin $log show
step revert;    $bin $log revert
step show;      $bin $log show
step "run --json"; $bin $log --json run
echo
echo "users and orders now in the database:"
"${MIGRATE_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}/psql" -X -d "$DATABASE_URL" \
  -c 'SELECT u.email, count(o.*) AS orders, u.email_verified FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id'
echo "log: $work/migration-execution.log ($(wc -l < "$work/migration-execution.log") events)"
