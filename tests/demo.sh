#!/usr/bin/env bash
# The README demo: the example migrations of migrations/ against the
# throwaway PostgreSQL that tests/with_pg.sh started (PGHOST/PGPORT point at
# it): the 60-second tour. Run as   tests/with_pg.sh tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# MIGRATE_BIN=migrate-lua runs the installed binary found on PATH instead
bin=${MIGRATE_BIN:-$(realpath "${MIGRATE_BUILD_DIR:-build}/migrate-lua")}
work=$(mktemp -d "${MIGRATE_TEST_TMP:-/tmp}/demo.XXXXXX")
export DATABASE_URL="host=$PGHOST port=$PGPORT user=${PGUSER:-postgres} dbname=postgres"
export MIGRATE_LUA_DIR=$PWD/migrations
psql=${MIGRATE_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}/psql
cd "$work"                                   # the log file lands here

tour() { printf '\n$ migrate-lua %s\n' "$*"; "$bin" "$@"; }
tour show
tour dry-run
tour safe-run
tour show
printf '\n$ psql -c "UPDATE users SET email_verified = true"\n'
"$psql" -X -q -d "$DATABASE_URL" -c "UPDATE users SET email_verified = true"
tour rollback
tour safe-run                                # the column is back, every value false
tour backup list
id=$("$bin" --json backup list | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -1)
tour backup restore "$id"                    # the values come back, by primary key
printf '\n$ psql -c "SELECT email, email_verified FROM users"\n'
"$psql" -X -d "$DATABASE_URL" -c "SELECT email, email_verified FROM users"
tour show --check
echo
echo "log: $work/migration-execution.log ($(wc -l < migration-execution.log) events)"
