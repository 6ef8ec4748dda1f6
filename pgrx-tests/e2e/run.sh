#!/usr/bin/env bash
# End-to-end suite: a real PostgreSQL cluster (of $PG_CONFIG), the genuine Synapse schema, the
# installed extension, data from the project's generator.
#
# Each case is pgrx-tests/e2e/cases/NAME.sql, run by psql with ON_ERROR_STOP in a fresh
# database. Header lines configure it:
#   -- data: ARGS      generator arguments (synapse-compress-gen ARGS | psql), repeatable
# A case passes when psql exits 0; one that prints "SKIPPED: why" and exits 0 is
# skipped (a server without what it needs). Prints "N passed, N failed, N skipped" last.
# `run.sh NAME` runs the cases whose name contains NAME; E2E_SKIP="a b" skips cases a, b.
set -uo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/../env.sh"
DIR=${E2E_DIR:-/tmp/synapse_compress/e2e}
PORT=${E2E_PORT:-55432}
LOGS=$DIR-logs
mkdir -p "$LOGS"

bash scripts/cluster.sh start "$DIR" "$PORT" >/dev/null || exit 1
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1' EXIT

passed=0 failed=0 skipped=0 failures=()
filter=${1:-}
for case in pgrx-tests/e2e/cases/*.sql; do
    name=$(basename "$case" .sql)
    [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && continue
    if [[ " ${E2E_SKIP:-} " == *" $name "* ]]; then
        skipped=$((skipped + 1)); echo "skip   $name: in E2E_SKIP"; continue
    fi
    db="e2e_${name}"
    log="$LOGS/$name.log"
    start=$(date +%s%N)
    {
        bash scripts/cluster.sh createdb "$DIR" "$PORT" "$db" >/dev/null &&
        psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/e2e/lib.sql &&
        { sed -n 's/^-- data: //p' "$case" | while read -r args; do
              # shellcheck disable=SC2086
              "$GEN" $args | psql -X -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null || exit 1
          done; } &&
        psql -X -q -d "$db" -c "VACUUM ANALYZE" &&
        psql -X -v ON_ERROR_STOP=1 -d "$db" -f "$case"
    } >"$log" 2>&1
    rc=$?
    secs=$(( ($(date +%s%N) - start) / 1000000000 ))
    if [ $rc -eq 0 ] && grep -q '^SKIPPED: ' "$log"; then
        skipped=$((skipped + 1)); echo "skip   $name: $(sed -n 's/^SKIPPED: //p' "$log" | head -n 1)"
    elif [ $rc -eq 0 ]; then
        passed=$((passed + 1)); echo "ok     $name (${secs}s)"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "FAILED $name (${secs}s), log: $log"
        tail -n 15 "$log" | sed 's/^/    /'
    fi
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
done
echo "e2e: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
