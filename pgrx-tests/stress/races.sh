#!/usr/bin/env bash
# Deterministic races between compress_room and Synapse's own transactions
# (pgrx-tests/sim.sql), each forced into its worst interleaving: a compress_room
# transaction is held open after it wrote, while Synapse marks and deletes groups or
# purges the room; then every group's state is checked (sc_sim.check_round).
#
#   bash pgrx-tests/stress/races.sh [NAME]
#
#   new_prev_deleted   a group compress_room chose as a new predecessor is marked
#                      pending deletion (purge history) after compress_room planned,
#                      and Synapse's deletion runs before compress_room commits
#   old_prev_deleted   the same for the stored predecessor of a rewritten group
#   room_purged        the room is purged (purge_room) before compress_room commits
#   pending_avoided    a group pending deletion is neither rewritten nor chosen as a
#                      predecessor
#   persisting_avoided the same for a group in state_groups_persisting
# Synapse's deletion waits 10 minutes after marking; here 0 (a compress_room
# transaction open for longer than that delay is the real-world case).
# Last line PASS or FAIL.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DIR=${STRESS_DIR:-/tmp/synapse_compress/stress}
PORT=${STRESS_PORT:-55442}
GEN="$ROOT/target/release/synapse-compress-gen"
LOGS=/tmp/synapse_compress/stress-logs
filter=${1:-}
SCENARIOS="new_prev_deleted old_prev_deleted room_purged pending_avoided persisting_avoided"
if [ -n "$filter" ] && ! grep -q -- "$filter" <<<"$SCENARIOS"; then
    echo "usage: races.sh [NAME], NAME one of: $SCENARIOS" >&2; exit 2
fi

mkdir -p /tmp/synapse_compress "$LOGS"
chmod a+rx /tmp/synapse_compress
[ -x "$GEN" ] || cargo build --release -q -p synapse_compress_testkit --bins
# shellcheck source=pgrx-tests/stress/common.sh
source pgrx-tests/stress/common.sh
stress_cluster

export PGOPTIONS='-c client_min_messages=warning'
RR='-c default_transaction_isolation=repeatable\ read'
DB=races_base
q() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
val() { q -At -c "$1"; }

# A base database, cloned per scenario: generated rooms, one grown Synapse-style
# (a snapshot every 100 groups) so that compress_room rewrites it.
bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null
q -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/lib.sql -f pgrx-tests/sim.sql
"$GEN" --preset small --scale 2 --seed 11 2>/dev/null | q >/dev/null
q <<'SQL' >/dev/null
INSERT INTO sc_sim.rooms SELECT DISTINCT room_id, 'live' FROM state_groups;
CALL sc_test.snapshot();
UPDATE sc_sim.rooms SET hot = true WHERE room_id = (
  SELECT g.room_id FROM state_groups g JOIN sc_test.before b ON b.state_group = g.id
  GROUP BY 1 HAVING count(*) >= 20 ORDER BY max(b.n) DESC LIMIT 1);
SELECT sc_sim.grow(room_id, 250) FROM sc_sim.rooms WHERE hot;
CALL sc_test.snapshot();
CREATE TABLE sc_sim.edges_before AS SELECT * FROM state_group_edges;
VACUUM ANALYZE;
SQL
ROOM=$(val "SELECT room_id FROM sc_sim.rooms WHERE hot")

# What compress_room would do (run and rolled back): "group old_prev new_prev" lines.
PLAN_SQL="BEGIN;
SELECT 1 FROM compress_room(:'room');
SELECT g.id, coalesce(b.prev_state_group, 0), coalesce(e.prev_state_group, 0)
FROM state_groups g
LEFT JOIN sc_sim.edges_before b ON b.state_group = g.id
LEFT JOIN state_group_edges e ON e.state_group = g.id
WHERE g.room_id = :'room' AND b.prev_state_group IS DISTINCT FROM e.prev_state_group
ORDER BY 1;
ROLLBACK;"

passed=0 failed=0
# Run compress_room in $DB, holding its transaction 2 s after it returned. Sets A.
hold_compress() {
    PGAPPNAME=race_a psql -X -q -d "$DB" -v room="$ROOM" >"$LOGS/race_$1.log" 2>&1 <<'SQL' &
BEGIN;
SELECT groups_changed, written FROM compress_room(:'room');
SELECT set_config('application_name', 'race_a_holding', false);
SELECT pg_sleep(2);
COMMIT;
SQL
    A=$!
    local n=0
    for _ in $(seq 400); do
        n=$(val "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'race_a_holding'")
        [ "$n" = 1 ] && return 0
        kill -0 "$A" 2>/dev/null || break
        sleep 0.025
    done
    return 1
}

# Synapse's purge history of group $1's event, then its deletion loop (delay 0), in
# Synapse's transactions (REPEATABLE READ, retries), while compress_room holds.
purge_and_delete() {
    q -c "SET default_transaction_isolation = 'repeatable read'" \
      -c "DELETE FROM event_to_state_groups WHERE state_group = $1" \
      -c "SELECT sc_sim.mark_pending(ARRAY[$1]::bigint[])" -c "SELECT pg_sleep(0.01)" >/dev/null
    PGOPTIONS="$PGOPTIONS $RR" psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CALL sc_sim.step_delete(0)"
}

report() {  # $1 name; checks the database; prints the outcome
    local name=$1 bad
    bad=$(val "SELECT string_agg(check_name || ': ' || bad || ' (e.g. ' || coalesce(example, '') || ')', '; ')
               FROM sc_sim.check_round(0) WHERE bad > 0")
    local notes
    notes=$(val "SELECT coalesce(string_agg(op || ' ' || n, ', ' ORDER BY id), 'none') FROM sc_sim.log
                 WHERE op LIKE 'retry%' OR op IN ('deleted', 'dedelta', 'groups_purged', 'writer_error')")
    if [ -z "$bad" ] && [ -z "${2:-}" ]; then
        passed=$((passed + 1)); echo "ok     $name   (Synapse side: $notes)"
    else
        failed=$((failed + 1)); echo "FAILED $name   (Synapse side: $notes)"
        [ -z "$bad" ] || echo "       $bad"
        [ -z "${2:-}" ] || echo "       $2"
    fi
}

fresh() {  # a clone of the base database for one scenario
    DB=race_$1
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB TEMPLATE races_base"
    q -c "TRUNCATE sc_sim.log"
}

wanted() { [ -z "$filter" ] || [[ "$1" == *"$filter"* ]]; }

if wanted new_prev_deleted; then
    fresh new_prev_deleted
    # a new predecessor that compress_room does not rewrite itself
    x=$(q -At -v room="$ROOM" <<<"$PLAN_SQL" | awk -F'|' '
        NF == 3 { rewritten[$1] = 1; if ($3 != 0) prev[$3] = 1 }
        END { for (p in prev) if (!(p in rewritten)) { print p; exit } }')
    if [ -n "$x" ] && hold_compress new_prev_deleted; then
        purge_and_delete "$x"
        wait "$A" || true
        report "new_prev_deleted (group $x)"
    else
        wait "${A:-0}" 2>/dev/null || true
        report new_prev_deleted "setup: no new predecessor to delete, or compress_room did not run"
    fi
fi

if wanted old_prev_deleted; then
    fresh old_prev_deleted
    # the stored predecessor of a rewritten group (not rewritten itself)
    x=$(q -At -v room="$ROOM" <<<"$PLAN_SQL" | awk -F'|' '
        NF == 3 { rewritten[$1] = 1; if ($2 != 0) old[$2] = 1 }
        END { for (p in old) if (!(p in rewritten)) { print p; exit } }')
    if [ -n "$x" ] && hold_compress old_prev_deleted; then
        purge_and_delete "$x"
        wait "$A" || true
        report "old_prev_deleted (group $x)"
    else
        wait "${A:-0}" 2>/dev/null || true
        report old_prev_deleted "setup: no old predecessor to delete, or compress_room did not run"
    fi
fi

if wanted room_purged; then
    fresh room_purged
    if hold_compress room_purged; then
        q -v room="$ROOM" <<<"SELECT sc_sim.purge_room_main(:'room');" >/dev/null
        PGOPTIONS="$PGOPTIONS $RR" psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -v room="$ROOM" >/dev/null \
            <<<"CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.purge_room_state(%L))', :'room'), NULL, NULL);"
        wait "$A" || true
        report room_purged
    else
        wait "${A:-0}" 2>/dev/null || true
        report room_purged "setup: compress_room did not run"
    fi
fi

# A group marked pending deletion / being persisted must be left alone: never
# rewritten, never a new predecessor.
for kind in pending persisting; do
    wanted "${kind}_avoided" || continue
    fresh "${kind}_avoided"
    plan=$(q -At -v room="$ROOM" <<<"$PLAN_SQL" | awk -F'|' 'NF == 3')
    # freeze one new predecessor and one rewritten group
    x=$(awk -F'|' '$3 != 0 { print $3; exit }' <<<"$plan")
    [ -n "$x" ] || { report "${kind}_avoided" "setup: compress_room planned no rewrite"; continue; }
    y=$(awk -F'|' -v x="$x" '$1 != x { print $1; exit }' <<<"$plan")
    if [ "$kind" = pending ]; then
        q -c "SELECT sc_sim.mark_pending(ARRAY[$x, $y]::bigint[])" >/dev/null
    else
        q -c "SELECT sc_sim.mark_persisting(ARRAY[$x, $y]::bigint[], 'race')" >/dev/null
    fi
    after=$(q -At -v room="$ROOM" <<<"$PLAN_SQL" | awk -F'|' 'NF == 3')
    why=''
    awk -F'|' -v x="$x" -v y="$y" '$3 == x || $3 == y { found = 1 } END { exit !found }' <<<"$after" \
        && why="a group $kind was chosen as a new predecessor ($x or $y)"
    awk -F'|' -v x="$x" -v y="$y" '$1 == x || $1 == y { found = 1 } END { exit !found }' <<<"$after" \
        && why="$why${why:+; }a group $kind was rewritten ($x or $y)"
    report "${kind}_avoided (groups $x, $y)" "$why"
done

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS races_base" >/dev/null
echo "races: $passed passed, $failed failed"
if [ "$failed" = 0 ]; then echo PASS; else echo FAIL; exit 1; fi
