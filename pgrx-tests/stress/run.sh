#!/usr/bin/env bash
# Concurrency stress test: compress_room racing Synapse's own state transactions.
#
#   bash pgrx-tests/stress/run.sh [--rounds N] [--seconds S] [--self-test] [--keep]
#
# A throwaway cluster, the genuine Synapse schema, generated rooms. Each round:
#   1. every group's resolved state is snapshotted (sc_test.fingerprints(); rooms to
#      purge whole are loaded first);
#   2. for S seconds, sessions run the simulation of Synapse 1.163.2 in
#      pgrx-tests/e2e/sim.sql at REPEATABLE READ (2 creating groups and persisting their
#      events, 1 purging history = marking groups pending deletion, 1 running the
#      deletion loop with its de-delta, 1 purging whole rooms, 1 reading and checking
#      state) while 2 psql sessions call compress_room on random rooms with random
#      levels, one statement per transaction (one at READ COMMITTED committing up to
#      0.5 s after each call, one at REPEATABLE READ committing at once), and a probe
#      holds one room's compression open while a second compress_room of that room
#      must get 55P03;
#   3. checks (sc_sim.check_round): every surviving group of the snapshot resolves
#      as before, every new group as its creator intended, no group vanished except by
#      a simulated Synapse deletion or purge, no edge to a higher id or to a missing
#      group, no group with two predecessors, no rows or edges of missing groups, no
#      wrong state read by any simulated Synapse transaction, and compress_room failed
#      only with 55P03/40001/40P01 (or "no such room" for a room purged before).
# Prints per-round figures and a summary, last line PASS or FAIL (exit status 0/1).
# --self-test: one short round with a deliberate corruption; passes if it is caught.
# STRESS_PRELOAD=1 loads the library with shared_preload_libraries (worker off).
# Defaults: 7 rounds of 8 s, about 2 minutes here.
set -euo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/../env.sh"
DIR=${STRESS_DIR:-/tmp/synapse_compress/stress}
PORT=${STRESS_PORT:-55442}
DB=stress
LOGS=$DIR-logs
ROUNDS=7
SECS=8
SELF_TEST=0
KEEP=0

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --self-test) SELF_TEST=1; ROUNDS=1; SECS=3; shift ;;
        --keep) KEEP=1; shift ;;
        *) sed -n '4p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || { echo "--rounds must be >= 1" >&2; exit 2; }
[[ "$SECS" =~ ^[0-9]+$ && "$SECS" -ge 1 ]] || { echo "--seconds must be >= 1" >&2; exit 2; }

mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.sql
[ -x "$GEN" ] || cargo build --release -q -p synapse_compress_testkit --bins

# shellcheck source=pgrx-tests/stress/common.sh
source pgrx-tests/stress/common.sh
stress_cluster

BASE_OPTS='-c client_min_messages=warning -c work_mem=32MB'
RR='-c default_transaction_isolation=repeatable\ read'
q() { PGOPTIONS="$BASE_OPTS" psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
val() { q -At -c "$1"; }

t_start=$(date +%s)
echo "== setup: cluster $DIR port $PORT, database $DB"
bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null
q -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/e2e/lib.sql -f pgrx-tests/e2e/sim.sql

# Load generated rooms with the next free ids; record their role.
load() {
    local role=$1; shift
    local first
    first=$(val "SELECT last_value + 100 FROM state_group_id_seq")
    "$GEN" "$@" --first-id "$first" 2>/dev/null | q >/dev/null
    q -v role="$role" <<'SQL'
INSERT INTO sc_sim.rooms (room_id, role)
SELECT DISTINCT room_id, :'role' FROM state_groups ON CONFLICT DO NOTHING;
SQL
}
load live --preset small --scale 2 --seed 11
load live --preset random --seed 12
load live --preset random --seed 13
load live --preset manyrooms --scale 0.003 --seed 14
q -c "VACUUM ANALYZE" -c "CALL sc_test.snapshot()"
# Two "hot" rooms (the largest states) get Synapse-shaped history (a snapshot every
# 100 groups) that compress_room can fold, and half the new groups in the rounds.
q <<'SQL' >/dev/null
UPDATE sc_sim.rooms SET hot = true WHERE room_id IN (
  SELECT g.room_id FROM state_groups g JOIN sc_test.before b ON b.state_group = g.id
  GROUP BY g.room_id HAVING count(*) >= 20 ORDER BY max(b.n) DESC LIMIT 2);
SELECT sc_sim.grow(room_id, 180) FROM sc_sim.rooms WHERE hot;
SQL
q -c "VACUUM ANALYZE"
echo "   $(val "SELECT count(*) || ' rooms (' || count(*) FILTER (WHERE hot) || ' hot), '
               || (SELECT count(*) FROM state_groups) || ' groups, '
               || (SELECT count(*) FROM state_groups_state) || ' rows' FROM sc_sim.rooms")"

rand() { awk -v s="$RANDOM" -v a="$1" -v b="$2" 'BEGIN { srand(s); printf "%.2f", a + rand() * (b - a) }'; }

# Hold one room's compression open (its lock) and try a second one: it must get 55P03.
probe() {
    local r=$1 room n=0
    sleep "$(rand 0.5 "$((SECS / 2))")"
    room=$(val "SELECT room_id FROM sc_sim.rooms WHERE role = 'live' ORDER BY random() LIMIT 1")
    PGOPTIONS="$BASE_OPTS -c sc_sim.round=$r" PGAPPNAME="sc_hold_$r" \
        psql -X -q -d "$DB" -v room="$room" >>"$LOGS/probe.log" 2>&1 \
        <<<"CALL sc_sim.compress_hold(:'room', '100,50,25', 2);" &
    local hold=$!
    while kill -0 "$hold" 2>/dev/null; do
        n=$(val "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'sc_hold_${r}_holding'")
        [ "$n" = 1 ] && break
        sleep 0.05
    done
    if [ "$n" = 1 ]; then
        PGOPTIONS="$BASE_OPTS -c sc_sim.round=$r" psql -X -q -d "$DB" -v room="$room" \
            >>"$LOGS/probe.log" 2>&1 <<<"CALL sc_sim.compress('probe', :'room', '100,50,25');"
    fi
    wait "$hold"
}

# A compressing session: compress_room on random rooms (now and then a purged one)
# with random levels until the round ends, each call a top-level statement in its own
# transaction (as an admin runs it), committed up to `hold` seconds after it returned;
# every outcome goes to sc_sim.compress_log. The psql script ($1: seconds) takes the
# variables tag and hold.
compressor_script() {
    local secs=$1 once i
    once=$(cat <<'SQL'
SELECT clock_timestamp() > :'deadline' AS done \gset
\if :done
\q
\endif
SELECT room_id AS room,
       (ARRAY['100,50,25', '100,50,25', '100,50,25', '200,50', '50,25', '30,10,5'])[1 + floor(random() * 6)::int] AS lv,
       clock_timestamp() AS t0
FROM sc_sim.rooms WHERE purged_at IS NULL OR random() < 0.05
ORDER BY hot AND random() < 0.3 DESC, random() LIMIT 1 \gset
BEGIN;
SELECT c.groups_changed AS changed, c.groups_skipped AS skipped, c.written AS wrote
FROM compress_room(:'room', levels => :'lv') c \gset
\if :ERROR
ROLLBACK;
INSERT INTO sc_sim.compress_log (tag, room_id, levels, started_at, finished_at, sqlstate, message)
VALUES (:'tag', :'room', :'lv', :'t0', clock_timestamp(), :'LAST_ERROR_SQLSTATE', :'LAST_ERROR_MESSAGE');
\else
SELECT pg_sleep(random() * :hold);
COMMIT;
INSERT INTO sc_sim.compress_log (tag, room_id, levels, started_at, finished_at,
                                 groups_changed, groups_skipped, written)
VALUES (:'tag', :'room', :'lv', :'t0', clock_timestamp(), :changed, :skipped, :'wrote');
\endif
SELECT pg_sleep(random() * 0.15);
SQL
)
    printf '%s\n' '\set ON_ERROR_STOP 0' \
        "SELECT clock_timestamp() + interval '$secs seconds' AS deadline \\gset"
    for i in $(seq 2000); do printf '%s\n' "$once"; done
}

compressor() {  # $1 name, $2 PGOPTIONS, $3 tag, $4 hold
    PGOPTIONS="$BASE_OPTS $2" PGAPPNAME="sc_$1" timeout $((SECS + 60)) \
        psql -X -q -d "$DB" -v tag="$3" -v hold="$4" -f "$LOGS/compressor.sql" 2>>"$LOGS/$1.log" >/dev/null
}

# One background session; a hung one is killed SECS+60 s later (and fails the round).
session() {
    local name=$1 opts=$2 sql=$3
    PGOPTIONS="$BASE_OPTS $opts" PGAPPNAME="sc_$name" timeout $((SECS + 60)) \
        psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "$sql" >>"$LOGS/$name.log" 2>&1
}

compressor_script "$SECS" >"$LOGS/compressor.sql"
declare -A total_fail=()
failed_rounds=0
for r in $(seq 1 "$ROUNDS"); do
    t0=$(date +%s%N)
    # Fresh rooms to purge whole, then the truth of this round.
    load victim --preset small --scale 0.3 --seed $((100 + r))
    q -c "ANALYZE" -c "CALL sc_sim.snapshot()"
    delay_ms=$(( 200 + RANDOM % 1300 ))
    W="-c sc_sim.round=$r -c lock_timeout=30s $RR"
    C="-c sc_sim.round=$r"
    pids=() names=()
    start() { local name=$1; shift; session "$name" "$@" & pids+=($!); names+=("$name"); }
    start creator1 "$W" "CALL sc_sim.writer('creator', 1, $SECS)"
    start creator2 "$W" "CALL sc_sim.writer('creator', 2, $SECS)"
    start history  "$W" "CALL sc_sim.writer('history', 1, $SECS)"
    start deleter  "$W" "CALL sc_sim.writer('deleter', 1, $SECS, $delay_ms)"
    start purger   "$W" "CALL sc_sim.writer('purger', 1, $SECS)"
    start reader   "$W" "CALL sc_sim.writer('reader', 1, $SECS)"
    compressor compress_rc "$C" rc 0.5 & pids+=($!); names+=(compress_rc)
    compressor compress_rr "$C $RR" rr 0 & pids+=($!); names+=(compress_rr)
    probe "$r" & pids+=($!); names+=(probe)
    hung=0 hung_msgs=()
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            hung=$((hung + 1))
            hung_msgs+=("${names[$i]}: $(grep -m1 -E 'ERROR|FATAL' "$LOGS/${names[$i]}.log" 2>/dev/null || echo 'timed out')")
        fi
    done

    if [ "$SELF_TEST" = 1 ]; then
        # Sabotage: one surviving group of the snapshot gets a wrong event.
        q -c "UPDATE state_groups_state SET event_id = '\$sabotage'
              WHERE ctid = (SELECT s.ctid FROM state_groups_state s JOIN sc_test.before b
                            ON b.state_group = s.state_group LIMIT 1)"
    fi

    t_check=$(date +%s%N)
    checks=$(val "SELECT check_name || '|' || bad || '|' || coalesce(example, '')
                  FROM sc_sim.check_round($r)")
    declare -A f=()
    while IFS='|' read -r k v; do f[$k]=$v; done < <(val "SELECT what || '|' || n FROM sc_sim.figures($r)")
    g() { echo "${f[$1]:-0}"; }
    errs=$(val "SELECT coalesce(string_agg(sqlstate || ':' || c, ' ' ORDER BY sqlstate), 'none')
                FROM (SELECT sqlstate, count(*) c FROM sc_sim.compress_log
                      WHERE round = $r AND sqlstate IS NOT NULL GROUP BY 1) x")
    secs=$(( ($(date +%s%N) - t0) / 1000000 ))
    check_ms=$(( ($(date +%s%N) - t_check) / 1000000 ))
    printf 'round %d (%d.%03ds, check %d ms, deletion delay %d ms): groups +%d (%d delta, %d full), %d deleted, %d de-deltaed, %d rooms purged (%d groups); compress %d runs, %d written (%d groups changed), errors %s; writer retries 40001:%d 40P01:%d, refused %d\n' \
        "$r" $((secs / 1000)) $((secs % 1000)) "$check_ms" "$delay_ms" \
        $(( $(g new_delta) + $(g new_full) )) "$(g new_delta)" "$(g new_full)" \
        "$(g deleted)" "$(g dedelta)" "$(g room_purged)" "$(g groups_purged)" \
        "$(g compress_runs)" "$(g compress_written)" "$(g compress_groups_changed)" "$errs" \
        "$(g retry_40001)" "$(g retry_40P01)" \
        $(( $(g refused_new_group) + $(g refused_persist) ))
    bad_round=0
    if [ "$hung" -gt 0 ]; then
        echo "   FAIL: $hung session(s) failed or hung (logs in $LOGS):"; bad_round=1
        printf '         %s\n' "${hung_msgs[@]}"
        total_fail["sessions failed or hung"]=$(( ${total_fail["sessions failed or hung"]:-0} + hung ))
    fi
    while IFS='|' read -r name bad example; do
        [ -n "$name" ] && [ "$bad" -gt 0 ] || continue
        echo "   FAIL: $name: $bad (e.g. $example)"
        bad_round=1
        total_fail[$name]=$(( ${total_fail[$name]:-0} + bad ))
    done <<<"$checks"
    failed_rounds=$((failed_rounds + bad_round))
    unset f
done

echo "== summary ($(( $(date +%s) - t_start ))s)"
declare -A f=()
while IFS='|' read -r k v; do f[$k]=$v; done < <(val "SELECT what || '|' || n FROM sc_sim.figures(NULL)")
g() { echo "${f[$1]:-0}"; }
echo "rounds: $ROUNDS of ${SECS}s, $failed_rounds failed"
echo "groups: $(( $(g new_delta) + $(g new_full) )) created ($(g new_delta) delta, $(g new_full) full), $(g persisted) events persisted, $(g marked_pending) marked pending, $(g deleted) deleted, $(g dedelta) de-deltaed, $(g room_purged) rooms purged ($(g groups_purged) groups), $(g groups_read_checked) reads checked"
echo "Synapse-side: retries 40001:$(g retry_40001) 40P01:$(g retry_40P01), gave up $(( $(g gave_up_new_group) + $(g gave_up_persist) + $(g gave_up_delete) + $(g gave_up_purge_history) + $(g gave_up_purge_room) + $(g gave_up_read) )), refused (group deleted under it) $(( $(g refused_new_group) + $(g refused_persist) ))"
echo "compress_room: $(g compress_runs) runs, $(g compress_written) written ($(g compress_groups_changed) groups changed), errors by SQLSTATE: $(val "SELECT coalesce(string_agg(sqlstate || ':' || c, ' ' ORDER BY sqlstate), 'none') FROM (SELECT sqlstate, count(*) c FROM sc_sim.compress_log WHERE sqlstate IS NOT NULL GROUP BY 1) x")"
echo "55P03 probes: $(val "SELECT count(*) FILTER (WHERE sqlstate = '55P03') || ' of ' || count(*) || ' refused' FROM sc_sim.compress_log WHERE tag = 'probe'")"
for k in "${!total_fail[@]}"; do echo "failed: $k: ${total_fail[$k]}"; done
if [ "$SELF_TEST" = 1 ]; then
    if [ "$failed_rounds" -gt 0 ]; then echo "self-test: the sabotage was detected"; echo PASS; exit 0; fi
    echo "self-test: the sabotage went unnoticed"; echo FAIL; exit 1
fi
if [ "$failed_rounds" -eq 0 ]; then echo PASS; else
    echo "details: psql -h $DIR -p $PORT -U postgres $DB (run with --keep), tables sc_sim.anomaly, sc_sim.log, sc_sim.compress_log; session logs in $LOGS"
    echo FAIL; exit 1
fi
