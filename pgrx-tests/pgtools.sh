#!/usr/bin/env bash
# PostgreSQL's own test tools against a throwaway cluster holding a database with the
# genuine Synapse schema, the installed extension and the helpers of e2e/lib.sql and
# e2e/sim.sql (pg_regress and pg_isolation_regress run with --use-existing):
#   pgtools.sh regress   [TEST...]   pg_regress: pgrx-tests/regress/{sql,expected}
#   pgtools.sh isolation [TEST...]   pg_isolation_regress: pgrx-tests/isolation/{specs,expected}
# Default: every test of the suite, one after the other. The cluster: REGRESS_DIR /
# REGRESS_PORT, ISOLATION_DIR / ISOLATION_PORT. Output, and regression.diffs when a
# test fails, in "$DIR-logs". Exits with the tool's status.
set -uo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/env.sh"
suite=${1:-}; shift || true
case "$suite" in
    regress)
        DIR=${REGRESS_DIR:-/tmp/synapse_compress/regress}; PORT=${REGRESS_PORT:-55446}
        tool=regress/pg_regress; inputs=sql; ext=sql ;;
    isolation)
        DIR=${ISOLATION_DIR:-/tmp/synapse_compress/isolation}; PORT=${ISOLATION_PORT:-55447}
        tool=isolation/pg_isolation_regress; inputs=specs; ext=spec ;;
    *) sed -n '5,6p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
esac
SRC=pgrx-tests/$suite
DB=sc_$suite
LOGS=$DIR-logs
# pgxs.mk is lib/pgxs/src/makefiles/pgxs.mk; the tools are in lib/pgxs/src/test/.
TOOL=$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")/test/$tool
[ -x "$TOOL" ] || { echo "no $TOOL (install postgresql-server-dev for $PG_CONFIG)" >&2; exit 1; }

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    for f in "$SRC/$inputs"/*."$ext"; do tests+=("$(basename "$f" ."$ext")"); done
fi

rm -rf "$LOGS"; mkdir -p "$LOGS"
bash scripts/cluster.sh start "$DIR" "$PORT" >/dev/null || exit 1
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1' EXIT
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null || exit 1
setup=(-f pgrx-tests/e2e/lib.sql -f pgrx-tests/e2e/sim.sql)
[ ! -f "$SRC/setup.sql" ] || setup+=(-f "$SRC/setup.sql")
PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -d "$DB" \
    -c "CREATE EXTENSION synapse_compress" "${setup[@]}" || exit 1

"$TOOL" --use-existing --host="$DIR" --port="$PORT" --user=postgres --dbname="$DB" \
    --bindir="$PG_BIN" --inputdir="$SRC" --outputdir="$LOGS" "${tests[@]}"
rc=$?
[ $rc -eq 0 ] || { echo "$suite: differences in $LOGS/regression.diffs:"; head -n 80 "$LOGS/regression.diffs"; }
exit $rc
