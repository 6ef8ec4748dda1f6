#!/usr/bin/env bash
# Least privilege: Synapse's role owns the database, its schema and the state tables,
# and plants triggers, a rule and look-alike functions and operators (attack.sql).
# compress_room and CALL compress_database() run by a superuser, and the background
# worker (as the bootstrap superuser, then as Synapse's own role), compress the rooms:
#   - every group resolves as before, and rows were removed;
#   - the planted triggers ran (the test can fail), but only as Synapse's role, and the
#     role is still not superuser;
#   - no look-alike function or operator was ever called;
#   - mixed owners and a caller without privileges are refused with 42501.
# Prints "security: N passed, N failed" last.
set -uo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/../env.sh"
DIR=${SECURITY_DIR:-/tmp/synapse_compress/security}
PORT=${SECURITY_PORT:-55452}
LOGS="$DIR-logs"
mkdir -p "$LOGS"
LOG=$LOGS/run.log
: >"$LOG"

# Worst case for error reports: pgrx adds the Rust backtrace of an error to its DETAIL
# when the server runs with RUST_BACKTRACE set; none must reach a client.
export RUST_BACKTRACE=1
bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1
bash scripts/cluster.sh start "$DIR" "$PORT" >/dev/null || exit 1
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1' EXIT
echo "== security on PostgreSQL $(psql -X -At -d postgres -c 'SHOW server_version')"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok     $*"; }
fail() { failed=$((failed + 1)); echo "FAILED $*"; }
check() {  # $1 description, $2 SQL returning true when it holds (run with a safe path)
    local got
    got=$(safe -At -c "SELECT $2" 2>>"$LOG")
    if [ "$got" = t ]; then ok "$1"; else fail "$1 (got: ${got:-error, see $LOG})"; fi
}
# The admin's sessions: the database's own search_path (the attacker's), as a superuser.
admin() { psql -X -q -v ON_ERROR_STOP=1 -d sec "$@" >>"$LOG" 2>&1; }
# The test's own checks and setup: a search_path of its own, so it never trips a trap.
safe() { PGOPTIONS='-c search_path=pg_catalog,public -c client_min_messages=warning' \
             psql -X -q -v ON_ERROR_STOP=1 -d sec "$@"; }
as_synapse() { PGOPTIONS='-c search_path=pg_catalog,public -c client_min_messages=warning' \
                   psql -X -q -v ON_ERROR_STOP=1 -U synapse -d sec "$@" >>"$LOG" 2>&1; }
wait_for() {  # $1 SQL that becomes true; polls a state, at most $2 seconds
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        [ "$(safe -At -c "SELECT $1" 2>>"$LOG")" = t ] && return 0
        sleep 0.5
    done
    return 1
}
preload() {  # restart with the worker registered; $1: its role ('' = bootstrap superuser)
    bash scripts/cluster.sh stop "$DIR" >/dev/null
    bash scripts/cluster.sh start "$DIR" "$PORT" \
        "shared_preload_libraries = 'synapse_compress'" "synapse_compress.database = 'sec'" \
        "synapse_compress.role = '$1'" "synapse_compress.interval = 3600" \
        "synapse_compress.chunk_pause = 0" "synapse_compress.chunk_size = 50" >/dev/null
}

echo "== setup: Synapse's role owns everything; rooms; planted code"
bash scripts/cluster.sh createdb "$DIR" "$PORT" sec >/dev/null || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d postgres >>"$LOG" 2>&1 <<'SQL' || { echo "setup failed, see $LOG"; exit 1; }
DROP ROLE IF EXISTS synapse;
DROP ROLE IF EXISTS bystander;
CREATE ROLE synapse LOGIN NOSUPERUSER;
CREATE ROLE bystander LOGIN NOSUPERUSER;
ALTER DATABASE sec OWNER TO synapse;
SQL
safe -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/e2e/lib.sql -c "SELECT synapse_compress.pause()" \
    >>"$LOG" 2>&1 || { echo "setup failed, see $LOG"; exit 1; }
for args in "--preset small --scale 3 --seed 21" "--preset headline --scale 0.01 --seed 4 --first-id 50000"; do
    # shellcheck disable=SC2086
    "$GEN" $args 2>>"$LOG" | safe >/dev/null 2>>"$LOG" || { echo "data load failed, see $LOG"; exit 1; }
done
safe >>"$LOG" 2>&1 <<'SQL' || { echo "setup failed, see $LOG"; exit 1; }
ALTER SCHEMA public OWNER TO synapse;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND (c.relkind IN ('r', 'p') OR c.relkind = 'S' AND NOT EXISTS
                   (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))) LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO synapse', r.rel);
    END LOOP;
END $$;
VACUUM ANALYZE;
CALL sc_test.snapshot();
SQL
rows0=$(safe -At -c "SELECT count(*) FROM state_groups_state")
as_synapse -f pgrx-tests/security/attack.sql || { echo "attack setup failed, see $LOG"; exit 1; }
rooms=$(safe -At -c "SELECT count(DISTINCT room_id) FROM state_groups")
first=$(safe -At -c "SELECT room_id FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
echo "   $rooms rooms, $rows0 rows"

# The planted code is live: a superuser's own write runs it with superuser rights, and
# the escalation succeeds (then undone). Without the extension's protection, this is
# what its rewrites would do.
safe -c "UPDATE state_groups SET event_id = event_id WHERE id = (SELECT min(id) FROM state_groups)" >>"$LOG" 2>&1
check "planted code escalates when a superuser writes the tables directly" \
      "(SELECT bool_and(escalated) AND bool_and(cur = 'postgres') FROM trigger_log)
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = 'synapse')"
safe -c "ALTER ROLE synapse NOSUPERUSER" -c "TRUNCATE trigger_log" >>"$LOG" 2>&1
# The look-alikes are live: under the database's search_path they win over pg_catalog.
admin -c "SELECT hashtext('x'), 1::bigint = 2::bigint"
check "look-alike functions and operators win under the database's search_path" \
      "(SELECT count(DISTINCT what) = 2 FROM trap_log)"
safe -c "ALTER ROLE synapse NOSUPERUSER" -c "TRUNCATE trap_log" >>"$LOG" 2>&1

echo "== refusals"
# A role granted EXECUTE but no privilege on the tables may not act as their owner.
safe -c "GRANT EXECUTE ON FUNCTION compress_room(text, text, boolean, bigint, bigint, bigint) TO bystander" >>"$LOG" 2>&1
out=$(PGOPTIONS='-c search_path=pg_catalog,public' psql -X -q -d sec -U bystander -v VERBOSITY=verbose \
      -c "SELECT * FROM compress_room('$first')" 2>&1)
if grep -q "ERROR:  42501: permission denied for schema synapse_compress" <<<"$out" && ! grep -q "DETAIL" <<<"$out"; then
    ok "PostgreSQL's own error inside compress_room reaches the client without a Rust backtrace"
else fail "PostgreSQL's own error reaches the client without a Rust backtrace ($out)"; fi
safe -c "GRANT USAGE ON SCHEMA synapse_compress TO bystander" \
     -c "GRANT SELECT ON synapse_compress.control TO bystander" >>"$LOG" 2>&1
out=$(PGOPTIONS='-c search_path=pg_catalog,public' psql -X -q -d sec -U bystander -v VERBOSITY=verbose \
      -c "SELECT * FROM compress_room('$first')" 2>&1)
if grep -q "ERROR:  42501" <<<"$out" && grep -q "HINT" <<<"$out" && ! grep -q "DETAIL" <<<"$out"; then
    ok "a caller without privileges on the tables gets 42501 with a hint"
else fail "a caller without privileges on the tables gets 42501 ($out)"; fi
# SELECT alone is not enough to rewrite.
safe -c "GRANT SELECT ON state_groups, state_groups_state, state_group_edges TO bystander" >>"$LOG" 2>&1
out=$(PGOPTIONS='-c search_path=pg_catalog,public' psql -X -q -d sec -U bystander -v VERBOSITY=verbose \
      -c "SELECT * FROM compress_room('$first')" 2>&1)
if grep -q "ERROR:  42501" <<<"$out" && grep -q "may not read and write" <<<"$out"; then
    ok "a caller with only SELECT on the tables gets 42501"
else fail "a caller with only SELECT on the tables gets 42501 ($out)"; fi
safe -c "REVOKE SELECT ON state_groups, state_groups_state, state_group_edges FROM bystander" >>"$LOG" 2>&1
# Mixed owners cannot be handled as one owner.
safe -c "ALTER TABLE state_group_edges OWNER TO bystander" >>"$LOG" 2>&1
out=$(psql -X -q -d sec -v VERBOSITY=verbose -c "SELECT * FROM compress_room('$first')" 2>&1)
if grep -q "ERROR:  42501" <<<"$out" && grep -q "different owners" <<<"$out"; then
    ok "state tables with different owners are refused with 42501"
else fail "state tables with different owners are refused with 42501 ($out)"; fi
safe -c "ALTER TABLE state_group_edges OWNER TO synapse" >>"$LOG" 2>&1
check "refusals wrote nothing" "(SELECT count(*) = $rows0 FROM state_groups_state)"

echo "== compress_room and CALL compress_database() as superuser, under the attacker's search_path"
admin -c "SHOW search_path" -c "SELECT * FROM compress_room('$first')" \
    && ok "compress_room ran" || fail "compress_room ran (see $LOG)"
admin -c "CALL compress_database(max_chunks => 3)" \
    && ok "compress_database ran" || fail "compress_database ran (see $LOG)"
admin -c "SELECT * FROM synapse_compress.rooms" -c "SELECT * FROM synapse_compress.status" \
    -c "SELECT synapse_compress.reset_room('$first')" \
    && ok "rooms and status views, reset_room ran" || fail "views, reset_room (see $LOG)"

echo "== the worker as the bootstrap superuser, then as Synapse's role"
worker_run() {  # $1 role ('' = bootstrap superuser), $2 label, $3 runs finished after it
    preload "$1"
    admin -c "SELECT synapse_compress.resume()"
    local last="FROM synapse_compress.runs WHERE source = 'worker' ORDER BY run_id DESC LIMIT 1"
    if wait_for "(SELECT count(*) = $3 FROM synapse_compress.runs WHERE source = 'worker' AND outcome <> 'running')" 120; then
        ok "worker run as $2 finished: $(safe -At -c "SELECT outcome || ', ' || chunks || ' chunks, ' || groups_changed || ' groups changed' $last")"
    else fail "worker run as $2 finished"; fi
    check "the worker's run as $2 compressed without errors" \
          "(SELECT outcome = 'done' AND errors = 0 AND groups_changed > 0 $last)"
}
worker_run '' superuser 1
# The minimal grants for a worker that is not a superuser (README, Security); the
# rooms start over so that it has work.
safe >>"$LOG" 2>&1 <<'SQL'
SELECT synapse_compress.pause();
GRANT USAGE ON SCHEMA synapse_compress TO synapse;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA synapse_compress TO synapse;
SQL
admin -c "SELECT synapse_compress.reset_room(room_id) FROM synapse_compress.rooms"
worker_run synapse synapse 2

echo "== results"
if safe -c "CALL sc_test.assert_same_state()" >>"$LOG" 2>&1; then ok "every group resolves as before"
else fail "every group resolves as before (see $LOG)"; fi
check "rows were removed ($rows0 before)" "(SELECT count(*) < $rows0 FROM state_groups_state)"
check "planted triggers and rule ran during the rewrites" \
      "(SELECT count(DISTINCT tbl) = 3 AND count(*) FILTER (WHERE level = 'RULE') > 0 FROM trigger_log)"
check "every planted trigger ran as synapse: $(safe -At -c "SELECT string_agg(DISTINCT cur || '/' || sess, ', ') FROM trigger_log")" \
      "(SELECT bool_and(cur = 'synapse') FROM trigger_log)"
check "no escalation succeeded" "(SELECT NOT bool_or(escalated) FROM trigger_log)"
check "synapse is still not superuser" "(SELECT NOT rolsuper FROM pg_roles WHERE rolname = 'synapse')"
check "no look-alike was called: $(safe -At -c "SELECT coalesce(string_agg(DISTINCT what || ' by ' || sess, ', '), 'none') FROM trap_log")" \
      "(SELECT count(*) = 0 FROM trap_log)"
check "the existing tool's tables belong to synapse and not to the extension" \
      "(SELECT bool_and(c.relowner = 'synapse'::regrole) AND count(*) = 3
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = ANY(array_agg(c.oid)) AND d.deptype = 'e')
        FROM pg_class c WHERE c.relname LIKE 'state_compressor%' AND c.relkind = 'r')"
echo "security: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
