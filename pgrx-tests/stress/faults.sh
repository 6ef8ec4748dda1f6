#!/usr/bin/env bash
# Fault tests of compress_room on a big room (headline preset, --scale 0.3 by default:
# ~22,000 groups, ~675,000 rows), on the stress test's throwaway cluster. Every
# interruption strikes at a known point, never at a moment: the run is held there on a
# lock this test holds (a session of its own), the test waits until it sees the
# backend wait on that lock (pg_blocking_pids), then strikes. The points:
#   read      the run must lock a group of its first chunk, which the test holds
#             FOR UPDATE (as Synapse's deletion would): holding no other lock, the
#             run waits for that row alone (src/spi/locks.rs). Later in the room it
#             would hold earlier chunks' locks and so never wait (NOWAIT: refused,
#             retried, then 55P03), so the "earlier chunks rewritten" case is write N
#   write N   a trigger on state_groups_state takes an advisory lock the test holds at
#             the Nth row the run inserts
# The faults:
#   kill      kill -9 of the backend at the read point and at write 1000; crash
#             recovery; nothing half-written
#   cancel    pg_cancel_backend at the read point, write 1 and write 1000
#   timeout   statement_timeout 2s, the run held at write 1: it ends by the timeout
#             (where it fired is printed, not asserted)
#   diskfull  an ERROR injected after N inserted rows (the trigger raising disk_full,
#             then out_of_memory), and temp_file_limit: the run aborts cleanly, or goes
#             on having skipped what failed, never leaving half a rewrite
#   block     the injected error inside a PL/pgSQL EXCEPTION block: the block's own
#             work is undone with it and the transaction can still commit
# then a normal run must succeed with every sampled group resolving as before.
#
#   bash pgrx-tests/stress/faults.sh [--scale F]
# "Intact" = the state tables are exactly as before (a multiset hash of every row of
# state_groups, state_group_edges and state_groups_state), which implies every group
# resolves as before. Stop latencies are printed as figures; no timing decides the
# outcome. Last line PASS or FAIL.
set -euo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/../env.sh"
DIR=${STRESS_DIR:-/tmp/synapse_compress/stress}
PORT=${STRESS_PORT:-55442}
DB=faults
LOGS=$DIR-logs
SCALE=0.3

while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=$2; shift 2 ;;
        *) sed -n '25p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done

mkdir -p "$LOGS"
[ -x "$GEN" ] || cargo build --release -q -p synapse_compress_testkit --bins
# shellcheck source=pgrx-tests/stress/common.sh
source pgrx-tests/stress/common.sh
# syncfs: crash recovery first syncs the data directory; file by file takes long here.
stress_cluster "recovery_init_sync_method = syncfs"

export PGOPTIONS='-c client_min_messages=warning'
q() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
val() { q -At -c "$1"; }
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
failures=0
fail() { echo "   FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "   ok: $*"; }
t_section=$(date +%s)
section() { echo "== $* ($(( $(date +%s) - t_section ))s so far)"; }

t_start=$(date +%s)
echo "== setup: headline room, scale $SCALE"
bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null
q -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/e2e/lib.sql -f pgrx-tests/e2e/sim.sql
"$GEN" --preset headline --scale "$SCALE" --seed 5 2>/dev/null | q >/dev/null
q -c "VACUUM ANALYZE" -c "CHECKPOINT"   # crash recovery replays from here
ROOM=$(val "SELECT room_id FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
echo "   $(val "SELECT count(*) FROM state_groups") groups, $(val "SELECT count(*) FROM state_groups_state") rows"

# A multiset hash of every row of the three tables: equal = nothing written.
DIGEST_SQL="SELECT (SELECT count(*) || ':' || coalesce(sum(hashtextextended(
                      concat_ws(E'\x1f', state_group, room_id, type, state_key, event_id), 0)), 0)
                    FROM state_groups_state) || '|' ||
                   (SELECT count(*) || ':' || coalesce(sum(hashtextextended(state_group || '>' || prev_state_group, 0)), 0)
                    FROM state_group_edges) || '|' ||
                   (SELECT count(*) || ':' || coalesce(sum(hashtextextended(id || room_id || event_id, 0)), 0)
                    FROM state_groups)"
DIGEST0=$(val "$DIGEST_SQL")
# Resolved state of 100 sampled groups (for the final run, which does write).
q -c "CREATE TABLE sc_fault_sample AS SELECT id AS state_group, (sc_sim.state_digest(id)).digest
      FROM (SELECT id FROM state_groups ORDER BY random() LIMIT 100) s"

SAMPLE_SQL="SELECT count(*) FROM sc_fault_sample s, sc_sim.state_digest(s.state_group) d
            WHERE d.digest IS DISTINCT FROM s.digest"

# The injection trigger. Rows the run inserts into state_groups_state are counted in
# the sequence sc_fault_rows (reset before each run); at row sc_fault.block_at it
# waits for an advisory lock the test holds; from row sc_fault.limit on it raises
# SQLSTATE sc_fault.errcode. Inactive unless one of those settings is set.
# Names are schema-qualified: the tool runs triggers on the state tables with
# search_path = pg_catalog, pg_temp (as PostgreSQL 17's maintenance commands do).
q <<'SQL'
CREATE SEQUENCE public.sc_fault_rows;
CREATE FUNCTION public.sc_fault_after_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('public.sc_fault_rows');
BEGIN
  IF n = nullif(current_setting('sc_fault.block_at', true), '')::bigint THEN
    PERFORM pg_advisory_xact_lock(hashtext('sc_fault'), 0);
  END IF;
  IF n >= nullif(current_setting('sc_fault.limit', true), '')::bigint THEN
    RAISE EXCEPTION 'injected fault after % rows written', n
      USING ERRCODE = current_setting('sc_fault.errcode');
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER sc_fault AFTER INSERT ON state_groups_state FOR EACH ROW
  WHEN (coalesce(current_setting('sc_fault.block_at', true), '') <> ''
        OR coalesce(current_setting('sc_fault.limit', true), '') <> '')
  EXECUTE FUNCTION public.sc_fault_after_rows();
SQL
# The 10th group of the room: in compress_room's first chunk.
READ_AT=$(val "SELECT id FROM state_groups WHERE room_id = '$ROOM' ORDER BY id OFFSET 10 LIMIT 1")

intact() {  # $1: what happened
    local d
    d=$(val "$DIGEST_SQL")
    if [ "$d" = "$DIGEST0" ]; then ok "$1: state tables unchanged"; else fail "$1: state tables changed ($DIGEST0 -> $d)"; fi
    local locks
    locks=$(val "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    [ "$locks" = 0 ] || fail "$1: $locks advisory lock(s) still held"
}

# The test's own session holding a lock the run will wait for, until release (or a
# crash restart): $1 the SQL taking it, in a transaction kept open by a pg_sleep that
# only pg_terminate_backend ends. Sets HOLDER (its pid) and HOLDER_BG (its psql).
hold() {
    PGAPPNAME=sc_fault_holder psql -X -q -d "$DB" -c "BEGIN" -c "$1" -c "SELECT pg_sleep(86400)" \
        >>"$LOGS/fault_holder.log" 2>&1 &
    HOLDER_BG=$!
    HOLDER=''
    while [ -z "$HOLDER" ]; do
        kill -0 "$HOLDER_BG" 2>/dev/null || { fail "the holder session failed (see $LOGS/fault_holder.log)"; return 1; }
        sleep 0.02
        HOLDER=$(val "SELECT pid FROM pg_stat_activity WHERE application_name = 'sc_fault_holder'
                      AND wait_event = 'PgSleep'")
    done
}
release() {
    val "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sc_fault_holder'" \
        >/dev/null 2>&1 || true
    wait "$HOLDER_BG" 2>/dev/null || true
}

# Hold the point $1 ("read" or a row number): sets PRE, the SQL the run's transaction
# runs before compress_room.
arm() {
    if [ "$1" = read ]; then
        # The wait lasts until the test strikes, not the tool's lock_timeout (1 s).
        PRE="SET LOCAL synapse_compress.lock_timeout = '1min';"
        hold "SELECT 1 FROM state_groups WHERE id = $READ_AT FOR UPDATE"
    else
        PRE="SELECT setval('sc_fault_rows', 1, false); SET LOCAL sc_fault.block_at = $1;"
        hold "SELECT pg_advisory_xact_lock(hashtext('sc_fault'), 0)"
    fi
}
where() { if [ "$1" = read ]; then echo "reading group $READ_AT"; else echo "writing row $1"; fi; }

# Start compress_room in the background (application_name sc_fault_$1), in a
# transaction rolled back at the end: a run the fault misses writes nothing.
# $2: SQL run first in that transaction. Sets BG (psql pid) and BACKEND (server pid).
start_compress() {
    local tag=$1 pre=$2
    PGAPPNAME="sc_fault_$tag" psql -X -q -d "$DB" \
        -v room="$ROOM" >"$LOGS/fault_$tag.log" 2>&1 <<SQL &
\\set VERBOSITY verbose
BEGIN;
$pre
SELECT * FROM compress_room(:'room');
ROLLBACK;
SQL
    BG=$!
    BACKEND=''
    while [ -z "$BACKEND" ]; do
        kill -0 "$BG" 2>/dev/null || return 1
        sleep 0.02
        BACKEND=$(val "SELECT pid FROM pg_stat_activity WHERE application_name = 'sc_fault_$tag'
                       AND state = 'active' AND query LIKE '%compress_room%'")
    done
}

# Wait until the run waits on the holder's lock (prints "held") or ends ("ended").
wait_held() {
    while kill -0 "$BG" 2>/dev/null; do
        [ "$(val "SELECT pg_blocking_pids($BACKEND) @> ARRAY[$HOLDER]")" = t ] && { echo held; return; }
        sleep 0.02
    done
    echo ended
}

# Wait for the background psql; prints the ms from $1 (ns) until it exited.
wait_bg() {
    local since=$1
    while kill -0 "$BG" 2>/dev/null; do sleep 0.005; done
    local end; end=$(now)
    wait "$BG" || true
    ms "$since" "$end"
}

# The first SQLSTATE of an ERROR in psql's verbose output ($1: file or '-' for stdin).
sqlstate_of() { { grep -o 'ERROR:  [0-9A-Z]\{5\}' "$1" || true; } | sed -n '1s/^ERROR:  //p'; }

section "kill -9 of the backend, held at a known point"
for point in read 1000; do
    log_lines=$(wc -l <"$DIR/server.log")
    arm "$point" || continue
    if start_compress kill "$PRE" && [ "$(wait_held)" = held ]; then
        kill -9 "$BACKEND"
        t_kill=$(now)
        wait_bg "$t_kill" >/dev/null
        wait "$HOLDER_BG" 2>/dev/null || true   # the crash restart ended it too
        # The postmaster restarts every backend and replays WAL.
        for _ in $(seq 600); do psql -X -q -d "$DB" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
        echo "   killed backend $BACKEND while $(where "$point"); server accepting connections again after $(ms "$t_kill" "$(now)") ms"
        tail -n +$((log_lines + 1)) "$DIR/server.log" | grep "terminated by signal 9" >/dev/null \
            && ok "server log shows the crash and recovery" || fail "no crash in the server log"
        intact "after kill -9 while $(where "$point")"
    else
        wait "$BG" 2>/dev/null || true
        release
        fail "compress_room ended before $(where "$point") (see $LOGS/fault_kill.log)"
    fi
done

section "pg_cancel_backend, held at a known point"
for point in read 1 1000; do
    arm "$point" || continue
    if start_compress cancel "$PRE" && [ "$(wait_held)" = held ]; then
        val "SELECT pg_cancel_backend($BACKEND)" >/dev/null
        t_sig=$(now)
        lat=$(wait_bg "$t_sig")
        release
        code=$(sqlstate_of "$LOGS/fault_cancel.log")
        echo "   cancelled while $(where "$point"): stopped ${lat} ms after the signal (SQLSTATE ${code:-none})"
        [ "$code" = 57014 ] || fail "cancel while $(where "$point"): expected SQLSTATE 57014, got ${code:-none}"
        intact "after cancel while $(where "$point")"
    else
        wait "$BG" 2>/dev/null || true
        release
        fail "compress_room ended before $(where "$point") (see $LOGS/fault_cancel.log)"
    fi
done

section "statement_timeout = 2s, held at a known point"
arm 1 && {
    t0=$(now)
    # The tool's own lock_timeout (1s by default) would end the wait on the held lock
    # first; this case is about statement_timeout.
    if start_compress timeout "$PRE SET LOCAL statement_timeout = '2s'; SET LOCAL synapse_compress.lock_timeout = '1min';"; then
        seen=$(wait_held)
        total=$(wait_bg "$t0")
    else
        seen=ended total=$(ms "$t0" "$(now)")
    fi
    release
    code=$(sqlstate_of "$LOGS/fault_timeout.log")
    if [ "$seen" = held ]; then at="while $(where 1)"; else at="before the run reached $(where 1)"; fi
    echo "   statement ended ${total} ms after it started, the timeout firing $at (SQLSTATE ${code:-none})"
    [ "$code" = 57014 ] || fail "statement_timeout: expected SQLSTATE 57014, got ${code:-none}"
    intact "after statement_timeout"
}

section "injected errors while writing (disk full, out of memory) and temp_file_limit"
for spec in "disk_full:53100:500" "out_of_memory:53200:2000"; do
    IFS=: read -r name errcode limit <<<"$spec"
    t0=$(now)
    val "SELECT setval('sc_fault_rows', 1, false)" >/dev/null
    out=$(PGOPTIONS="$PGOPTIONS -c sc_fault.limit=$limit -c sc_fault.errcode=$errcode" \
          psql -X -q -d "$DB" -v room="$ROOM" 2>&1 <<'SQL' || true
\set VERBOSITY verbose
SELECT groups_changed, groups_skipped, written FROM compress_room(:'room');
SQL
)
    code=$(sqlstate_of - <<<"$out")
    if [ -n "$code" ]; then
        echo "   $name after $limit rows: compress_room failed with SQLSTATE $code ($(ms "$t0" "$(now)") ms)"
        [ "$code" = "$errcode" ] || fail "$name: expected SQLSTATE $errcode, got $code"
        intact "after $name"
    else
        # It went on: then what it wrote must be whole and right.
        echo "   $name after $limit rows: compress_room returned: $(tail -1 <<<"$out")"
        bad=$(val "$SAMPLE_SQL")
        [ "$bad" = 0 ] || fail "$name: $bad sampled groups resolve differently after the run"
        DIGEST0=$(val "$DIGEST_SQL")
    fi
done

t0=$(now)
out=$(psql -X -q -d "$DB" -v room="$ROOM" 2>&1 <<'SQL' || true
\set VERBOSITY verbose
SET work_mem = '64kB';
SET temp_file_limit = '64kB';
BEGIN;
SELECT groups_changed, written FROM compress_room(:'room');
ROLLBACK;
SQL
)
code=$(sqlstate_of - <<<"$out")
if [ -n "$code" ]; then
    echo "   temp_file_limit 64kB (work_mem 64kB): compress_room failed with SQLSTATE $code ($(ms "$t0" "$(now)") ms)"
    [ "$code" = 53400 ] || fail "temp_file_limit: expected SQLSTATE 53400, got $code"
else
    echo "   temp_file_limit 64kB (work_mem 64kB): not reached (compress_room used no temporary files)"
fi
intact "after temp_file_limit"

section "an error inside a PL/pgSQL EXCEPTION block"
val "SELECT setval('sc_fault_rows', 1, false)" >/dev/null
out=$(PGOPTIONS="$PGOPTIONS -c sc_fault.limit=2000 -c sc_fault.errcode=53100" \
      psql -X -q -d "$DB" -v room="$ROOM" 2>&1 <<'SQL' || true
CREATE TEMP TABLE sc_fault_marker (x int);
SET sc_fault.room = :'room';
DO $$
BEGIN
  BEGIN
    INSERT INTO sc_fault_marker VALUES (1);          -- undone if the block fails
    PERFORM compress_room(current_setting('sc_fault.room'));
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'caught %: %', SQLSTATE, SQLERRM;
  END;
  RAISE WARNING 'marker rows after the block: %', (SELECT count(*) FROM sc_fault_marker);
END $$;
SELECT 'next statement ran: ' || count(*) FROM sc_fault_marker;
SQL
)
sed 's/^/   | /' <<<"$out"
grep -q 'caught 53100' <<<"$out" || fail "exception block: the injected error was not raised to the block"
grep -q 'marker rows after the block: 0' <<<"$out" \
    || fail "exception block: the block's own work survived its rollback (compress_room left its subtransaction open)"
grep -q 'next statement ran: ' <<<"$out" \
    || fail "exception block: the session could not go on after the block"
intact "after the exception block"
q -c "DROP TRIGGER sc_fault ON state_groups_state"

section "a normal run afterwards (the first 4000 groups)"
q -v room="$ROOM" <<'SQL' >/dev/null
SELECT * FROM compress_room(:'room', max_groups => 4000);
SQL
res=$(val "SELECT count(*) FROM state_groups_state")
bad=$(val "$SAMPLE_SQL")
shape=$(val "SELECT (SELECT count(*) FROM state_group_edges WHERE prev_state_group >= state_group)
               + (SELECT count(*) FROM (SELECT 1 FROM state_group_edges GROUP BY state_group HAVING count(*) > 1) x)
               + (SELECT count(*) FROM state_group_edges e WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = e.prev_state_group))")
echo "   compressed to $res rows; $bad of 100 sampled groups resolve differently; $shape malformed edges"
[ "$bad" = 0 ] && [ "$shape" = 0 ] && ok "normal run after the faults" || fail "normal run after the faults"

echo "== $(( $(date +%s) - t_start ))s, $failures failure(s)"
if [ "$failures" = 0 ]; then echo PASS; else echo FAIL; exit 1; fi
