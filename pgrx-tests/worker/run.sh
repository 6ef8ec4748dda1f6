#!/usr/bin/env bash
# The background worker in a real cluster with shared_preload_libraries: it waits for
# CREATE EXTENSION, adopts the existing tool's progress, compresses every room to
# verified identical state, survives a restart and a kill -9 mid-run without losing or
# repeating work, pauses and resumes, takes SIGHUP settings, and goes on past a
# failing room, keeps to synapse_compress.window (quiet hours) and to per-room
# exclusion. Prints "worker: N passed, N failed" last.
set -uo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/../env.sh"
DIR=${WORKER_DIR:-/tmp/synapse_compress/worker}
PORT=${WORKER_PORT:-55443}
DB=worker_e2e
LOG=$DIR-logs/worker.log
mkdir -p "$DIR-logs"

bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1
rm -rf "$DIR"
bash scripts/cluster.sh start "$DIR" "$PORT" \
    "shared_preload_libraries = 'synapse_compress'" \
    "synapse_compress.database = '$DB'" \
    "synapse_compress.interval = 3600" \
    "synapse_compress.chunk_size = 60" \
    "synapse_compress.chunk_pause = 50" >/dev/null || exit 1
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1' EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok     $*"; }
fail() { failed=$((failed + 1)); echo "FAILED $*"; }
q() { psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1" 2>>"$LOG"; }
# wait_for SQL SECONDS: until the query returns t.
wait_for() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        [ "$(q "$1")" = t ] && return 0
        sleep 0.2
    done
    echo "    timed out after $2 s waiting for: $1" >&2
    return 1
}
load() { "$GEN" "$@" 2>>"$LOG" | psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null 2>>"$LOG"; }
verified() {
    q "CALL sc_test.assert_same_state()" >/dev/null && q "CALL sc_test.assert_tree(175)" >/dev/null
}
worker_pid() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'synapse_compress worker'"; }
: >"$LOG"

# --- A database as synapse_auto_compressor left it, before the extension exists.
bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null
load --preset manyrooms --scale 0.02 --seed 31 --first-id 1
load --preset headline --scale 0.02 --seed 32 --first-id 200000
load --preset small --seed 33 --first-id 400000
# (compress_all in lib.sql names compress_room, which does not exist yet)
PGOPTIONS="-c check_function_bodies=off" psql -X -q -d "$DB" -f pgrx-tests/e2e/lib.sql >/dev/null
q "CALL sc_test.snapshot()"
adopted=$(q "SELECT room_id FROM state_groups WHERE id >= 200000 AND id < 400000 LIMIT 1")
q "CREATE TABLE state_compressor_state (room_id TEXT NOT NULL, level_num INT NOT NULL, max_size INT NOT NULL,
       current_length INT NOT NULL, current_head BIGINT, UNIQUE (room_id, level_num));
   CREATE TABLE state_compressor_progress (room_id TEXT PRIMARY KEY, last_compressed BIGINT NOT NULL);
   CREATE TABLE state_compressor_total_progress (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
       lowest_uncompressed_group BIGINT NOT NULL, CHECK (Lock='X'));
   INSERT INTO state_compressor_total_progress (lowest_uncompressed_group) VALUES (0);
   -- The tool stopped after the room's first 1000 groups, with levels 60,30.
   INSERT INTO state_compressor_progress
     SELECT '$adopted', id FROM state_groups WHERE room_id = '$adopted' ORDER BY id OFFSET 999 LIMIT 1;
   INSERT INTO state_compressor_state VALUES ('$adopted', 1, 60, 0, NULL), ('$adopted', 2, 30, 0, 0);" >/dev/null
q "CREATE TABLE adopted_before AS SELECT g.id, md5(string_agg(s.type || s.state_key || s.event_id, ',' ORDER BY s.type, s.state_key)) AS d
   FROM state_groups g LEFT JOIN state_groups_state s ON s.state_group = g.id
   WHERE g.room_id = '$adopted' AND g.id <= (SELECT last_compressed FROM state_compressor_progress) GROUP BY g.id" >/dev/null
total=$(q "SELECT count(*) FROM state_groups")
left=$(( total - 1000 ))

# --- The worker waits quietly for the extension. (If it started before createdb, it
# exited on the missing database and the postmaster restarts it within 30 s.)
for ((i = 0; i < 45 * 5; i++)); do
    grep -q "waiting for CREATE EXTENSION synapse_compress" "$DIR/server.log" && break
    sleep 0.2
done
if grep -q "waiting for CREATE EXTENSION synapse_compress" "$DIR/server.log"; then
    ok "worker waits for CREATE EXTENSION"
else
    fail "worker waits for CREATE EXTENSION"; tail -5 "$DIR/server.log"
fi

# --- It starts at once, and a restart mid-run loses and repeats nothing.
q "CREATE EXTENSION synapse_compress" >/dev/null
if wait_for "SELECT chunks >= 3 FROM synapse_compress.runs WHERE run_id = 1" 30; then
    activity=$(q "SELECT query FROM pg_stat_activity WHERE backend_type = 'synapse_compress worker'")
    bash scripts/cluster.sh restart "$DIR" >/dev/null
    if [ "$(q "SELECT outcome FROM synapse_compress.runs WHERE run_id = 1")" = stopped ]; then
        ok "restart: run 1 stopped at a chunk boundary (activity was: ${activity:-idle})"
    else
        fail "restart: run 1 $(q "SELECT outcome FROM synapse_compress.runs WHERE run_id = 1")"
    fi
else
    fail "worker started a run after CREATE EXTENSION"
fi

# --- kill -9 of the worker mid-run: crash recovery, the run is recorded as crashed.
if wait_for "SELECT chunks >= 2 FROM synapse_compress.runs WHERE run_id = 2" 30; then
    kill -9 "$(worker_pid)"
    sleep 2
    wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'synapse_compress worker')" 40 || true
fi
if wait_for "SELECT EXISTS (SELECT 1 FROM synapse_compress.runs WHERE outcome = 'done')" 120; then
    summary=$(q "SELECT string_agg(run_id || ':' || outcome || ':' || groups, ' ' ORDER BY run_id) FROM synapse_compress.runs")
    if [ "$(q "SELECT outcome FROM synapse_compress.runs WHERE run_id = 2")" = crashed ]; then
        ok "kill -9: run 2 recorded as crashed ($summary)"
    else
        fail "kill -9: run 2 not recorded as crashed ($summary)"
    fi
    done_groups=$(q "SELECT sum(groups) FROM synapse_compress.runs")
    if [ "$done_groups" = "$left" ]; then
        ok "every group compressed exactly once across runs ($done_groups of $total; 1000 adopted as done)"
    else
        fail "groups processed across runs: $done_groups, expected $left"
    fi
    if verified; then ok "every group keeps its state; tree within bounds"; else fail "state or tree check"; tail -3 "$LOG"; fi
    if [ "$(q "SELECT count(*) FROM adopted_before b JOIN LATERAL (SELECT md5(string_agg(s.type || s.state_key || s.event_id, ',' ORDER BY s.type, s.state_key)) AS d FROM state_groups_state s WHERE s.state_group = b.id) a ON true WHERE a.d IS DISTINCT FROM b.d")" = 0 ] &&
       [ "$(q "SELECT string_agg(max_size::text, ',' ORDER BY level_num) FROM state_compressor_state WHERE room_id = '$adopted'")" = "60,30" ]; then
        ok "adopted the existing tool's progress: groups it had done untouched, its level sizes kept"
    else
        fail "adoption of the existing tool's progress"
    fi
    if [ "$(q "SELECT rooms_pending = 0 AND rows_saved_total > 0 AND workers_running = 1 AND worker_registered FROM synapse_compress.status")" = t ]; then
        ok "status: nothing pending, rows saved $(q "SELECT rows_saved_total FROM synapse_compress.status")"
    else
        fail "status after the run: $(q "SELECT row_to_json(s) FROM synapse_compress.status s")"
    fi
else
    fail "a run finished after restart and kill -9"
    tail -20 "$DIR/server.log"
fi

# --- Pause stops work; resume continues.
q "SELECT synapse_compress.pause()" >/dev/null
runs=$(q "SELECT count(*) FROM synapse_compress.runs")
load --preset small --seed 34 --first-id 600000
q "CALL sc_test.snapshot()"
q "SELECT synapse_compress.run_now()" >/dev/null
sleep 6
if [ "$(q "SELECT count(*) FROM synapse_compress.runs")" = "$runs" ] && [ "$(q "SELECT next_run IS NULL FROM synapse_compress.status")" = t ]; then
    ok "paused: run_now() started nothing"
else
    fail "paused: a run started anyway"
fi
q "SELECT synapse_compress.resume()" >/dev/null
if wait_for "SELECT count(*) > $runs AND bool_and(outcome <> 'running') FROM synapse_compress.runs" 30 &&
   [ "$(q "SELECT rooms_pending FROM synapse_compress.status")" = 0 ] && verified; then
    ok "resume(): the new rooms compressed, state verified"
else
    fail "resume()"
fi

# --- A SIGHUP setting takes effect: a budget of 2 chunks per run.
q "ALTER SYSTEM SET synapse_compress.max_run_chunks = 2" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 1
load --preset small --seed 35 --first-id 800000
q "CALL sc_test.snapshot()"
last=$(q "SELECT max(run_id) FROM synapse_compress.runs")
q "SELECT synapse_compress.run_now()" >/dev/null
if wait_for "SELECT outcome <> 'running' FROM synapse_compress.runs WHERE run_id = $last + 1" 30 &&
   [ "$(q "SELECT outcome || ':' || chunks FROM synapse_compress.runs WHERE run_id = $last + 1")" = budget:2 ]; then
    ok "SIGHUP: max_run_chunks = 2 ended the run after 2 chunks"
else
    fail "SIGHUP: run $((last + 1)) is $(q "SELECT outcome || ':' || chunks FROM synapse_compress.runs WHERE run_id = $last + 1")"
fi
q "ALTER SYSTEM RESET synapse_compress.max_run_chunks" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
sleep 1

# --- A failing room is recorded and skipped; the others go on.
broken=$(q "SELECT room_id FROM state_groups WHERE id >= 800000 GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
q "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS \$\$
   BEGIN RAISE EXCEPTION 'injected failure for %', NEW.room_id; END \$\$;
   CREATE TRIGGER fail_insert BEFORE INSERT ON state_groups_state FOR EACH ROW
     WHEN (NEW.room_id = '$broken') EXECUTE FUNCTION fail_insert();" >/dev/null
q "SELECT synapse_compress.run_now()" >/dev/null
if wait_for "SELECT count(*) = 0 FROM synapse_compress.runs WHERE outcome = 'running'" 5 &&
   wait_for "SELECT outcome = 'done' FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1" 30 &&
   [ "$(q "SELECT error_count = 1 AND next_retry > now() AND last_error LIKE '%injected failure%' FROM synapse_compress.rooms WHERE room_id = '$broken'")" = t ] &&
   [ "$(q "SELECT count(*) FROM synapse_compress.rooms WHERE pending_groups > 0 AND room_id <> '$broken'")" = 0 ] &&
   verified; then
    ok "a failing room is recorded with its error and backoff; every other room compressed"
else
    fail "failing room: $(q "SELECT row_to_json(r) FROM synapse_compress.rooms r WHERE room_id = '$broken'")"
fi
# --- synapse_compress.window (quiet hours), from known points: windows computed from
# the server's clock (one that opens in 2 hours, one that opened an hour ago), and the
# worker's "settings reloaded" line before acting on a new one.
q "DROP TRIGGER fail_insert ON state_groups_state" >/dev/null
at() { q "SELECT to_char(localtime + interval '$1', 'HH24:MI')"; }
outside="$(at '2 hours')-$(at '3 hours')"
inside="$(at '-1 hour')-$(at '1 hour')"
# set_window WINDOW [SETTING = VALUE]: ALTER SYSTEM, reload, wait until the worker has it.
set_window() {
    local n
    n=$(grep -c "settings reloaded (window \"$1\")" "$DIR/server.log")
    q "ALTER SYSTEM SET synapse_compress.\"window\" = '$1'" >/dev/null
    [ -z "${2:-}" ] || q "ALTER SYSTEM SET $2" >/dev/null
    q "SELECT pg_reload_conf()" >/dev/null
    for ((i = 0; i < 30 * 5; i++)); do
        [ "$(grep -c "settings reloaded (window \"$1\")" "$DIR/server.log")" -gt "$n" ] && return 0
        sleep 0.2
    done
    echo "    the worker did not reload window $1" >&2
    return 1
}
set_window "$outside"
load --preset small --seed 36 --first-id 1000000
q "CALL sc_test.snapshot()"
last=$(q "SELECT max(run_id) FROM synapse_compress.runs")
q "SELECT synapse_compress.run_now()" >/dev/null
if wait_for "SELECT query = 'synapse_compress worker: waiting for synapse_compress.window $outside' FROM pg_stat_activity WHERE backend_type = 'synapse_compress worker'" 30 &&
   [ "$(q "SELECT count(*) FROM synapse_compress.runs WHERE run_id > $last")" = 0 ] &&
   grep -q "a run is due; waiting for synapse_compress.window \"$outside\"" "$DIR/server.log" &&
   [ "$(q "SELECT to_char(next_run, 'HH24:MI') = split_part('$outside', '-', 1) AND next_run > now() AND next_run < now() + interval '2 hours 1 minute' FROM synapse_compress.status")" = t ]; then
    ok "window $outside (excludes now): run_now() started no run; the worker says it waits; status.next_run is the window's opening"
else
    fail "window $outside: runs $(q "SELECT string_agg(run_id || ':' || outcome, ' ') FROM synapse_compress.runs WHERE run_id > $last")"
fi
# The window opens (the run is still due): it starts; a long chunk_pause holds it
# between chunks; then the window closes, and it ends at that chunk boundary.
set_window "$inside" "synapse_compress.chunk_pause = 60000"
if wait_for "SELECT chunks >= 1 AND outcome = 'running' FROM synapse_compress.runs WHERE run_id = $last + 1" 30; then
    ok "window $inside (includes now): the due run started"
    set_window "$outside"
    if wait_for "SELECT outcome <> 'running' FROM synapse_compress.runs WHERE run_id = $last + 1" 30 &&
       [ "$(q "SELECT outcome = 'window' AND message = 'synapse_compress.window $outside closed' AND chunks >= 1 FROM synapse_compress.runs WHERE run_id = $last + 1")" = t ] &&
       [ "$(q "SELECT count(*) > 0 FROM synapse_compress.rooms WHERE pending_groups > 0 AND room_id <> '$broken'")" = t ] && verified; then
        ok "window closed mid-run: run ended 'window' after $(q "SELECT chunks FROM synapse_compress.runs WHERE run_id = $last + 1") chunks, work left, state verified"
    else
        fail "window closed mid-run: $(q "SELECT row_to_json(r) FROM synapse_compress.runs r WHERE run_id = $last + 1")"
    fi
else
    fail "window $inside: no run started ($(q "SELECT string_agg(run_id || ':' || outcome, ' ') FROM synapse_compress.runs WHERE run_id > $last"))"
fi
# Always again (''): the next run finishes the work.
q "ALTER SYSTEM RESET synapse_compress.chunk_pause" >/dev/null
set_window ""
q "SELECT synapse_compress.run_now()" >/dev/null
if wait_for "SELECT outcome = 'done' FROM synapse_compress.runs WHERE run_id > $last + 1 ORDER BY run_id DESC LIMIT 1" 60 &&
   [ "$(q "SELECT count(*) FROM synapse_compress.rooms WHERE pending_groups > 0 AND room_id <> '$broken'")" = 0 ] && verified; then
    ok "window '': the next run finished the work"
else
    fail "window '': $(q "SELECT string_agg(run_id || ':' || outcome, ' ') FROM synapse_compress.runs WHERE run_id > $last")"
fi

# --- Per-room control in the worker's runs: an excluded room is left alone.
load --preset small --seed 37 --first-id 1200000
q "CALL sc_test.snapshot()"
ex=$(q "SELECT room_id FROM state_groups WHERE id >= 1200000 GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")
q "SELECT synapse_compress.exclude_room('$ex')" >/dev/null
last=$(q "SELECT max(run_id) FROM synapse_compress.runs")
q "SELECT synapse_compress.run_now()" >/dev/null
if wait_for "SELECT outcome = 'done' FROM synapse_compress.runs WHERE run_id = $last + 1" 60 &&
   [ "$(q "SELECT rooms_excluded FROM synapse_compress.runs WHERE run_id = $last + 1")" = 1 ] &&
   [ "$(q "SELECT excluded AND pending_groups > 0 AND chunks_written = 0 FROM synapse_compress.rooms WHERE room_id = '$ex'")" = t ] &&
   [ "$(q "SELECT count(*) FROM synapse_compress.rooms WHERE pending_groups > 0 AND room_id NOT IN ('$ex', '$broken')")" = 0 ] && verified; then
    ok "exclude_room: the worker's run left the room alone (counted), compressed the others"
else
    fail "exclude_room: $(q "SELECT row_to_json(r) FROM synapse_compress.runs r WHERE run_id = $last + 1")"
fi
if grep -qE "PANIC|server process .* was terminated by signal 11" "$DIR/server.log"; then
    fail "server log shows a crash"; grep -E "PANIC|signal 11" "$DIR/server.log" | head -3
fi
echo "worker: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
