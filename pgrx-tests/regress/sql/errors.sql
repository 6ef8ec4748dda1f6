-- What a user reads when a call goes wrong: each ERROR's message, HINT and SQLSTATE
-- (printed after it), the NOTICEs of calls that write nothing, and that no failed
-- call wrote anything. (Converted from the e2e case errors.sql, which checked the
-- SQLSTATEs only.)
\set VERBOSITY default
\set SHOW_CONTEXT never
SET synapse_compress.progress_interval = 3600;
SELECT sc_test.make_room('!r:example.org', 300, 1);
SELECT sc_test.raw_digest() AS raw0 \gset
-- Rooms that do not exist: no SQL injection, no odd bytes taken as anything.
SELECT * FROM compress_room('!nope:example.org');
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('''); DROP TABLE state_groups; --');
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room(E'!\x01\t:é');
\echo SQLSTATE :SQLSTATE
-- A room Synapse knows (rooms) with no state groups.
INSERT INTO rooms (room_id, is_public) VALUES ('!empty:example.org', false);
SELECT * FROM compress_room('!empty:example.org');
\echo SQLSTATE :SQLSTATE
-- NULL and invalid arguments.
SELECT * FROM compress_room(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!r:example.org', levels => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!r:example.org', dry_run => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!r:example.org', min_saved_rows => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!r:example.org', min_saved_rows => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!r:example.org', after_group => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!r:example.org', max_groups => 0);
\echo SQLSTATE :SQLSTATE
SET synapse_compress.chunk_size = 0;
\echo SQLSTATE :SQLSTATE
-- Bad levels, one message each (the hint is the same).
SELECT lv, sc_test.error_of(format('SELECT * FROM compress_room(%L, levels => %L)', '!r:example.org', lv))
FROM unnest(ARRAY['', ' ', '0', '-1', 'a,b', '100,,25', '1.5', '99999999999', '100000',
                  '2,2,2,2,2,2,2,2,2,2,2']) lv;
SELECT * FROM compress_room('!r:example.org', levels => '100,,25');
\echo SQLSTATE :SQLSTATE
-- Nothing was written by any of them, and state_groups is still there.
SELECT sc_test.raw_digest() = :'raw0' AS nothing_written, to_regclass('state_groups') AS still_there;

-- Not executable by PUBLIC; a role without the grant gets permission denied.
SELECT has_function_privilege('public', 'compress_room(text,text,boolean,bigint,bigint,bigint)', 'EXECUTE')
  AS public_may_execute;
CREATE ROLE sc_regress_nobody;
SET ROLE sc_regress_nobody;
SELECT * FROM compress_room('!r:example.org');
\echo SQLSTATE :SQLSTATE
RESET ROLE;
DROP ROLE sc_regress_nobody;

-- The NOTICEs of calls that write nothing, and the rows they return.
SELECT groups_changed, rows_before, rows_after, written
FROM compress_room('!r:example.org', min_saved_rows => 1000000);
SELECT groups_changed, rows_before, rows_after, dry_run, written
FROM compress_room('!r:example.org', dry_run => true);
SELECT sc_test.raw_digest() = :'raw0' AS nothing_written;
SELECT state_groups, groups_changed, groups_skipped, rows_before, rows_after, forced_snapshots,
       max_chain_after, written
FROM compress_room('!r:example.org');
SELECT groups_changed, written FROM compress_room('!r:example.org');
-- A room too small to gain anything.
SELECT sc_test.make_room('!tiny:example.org', 2, 1000);
SELECT groups_changed, written FROM compress_room('!tiny:example.org');
-- Levels that would grow the room (a snapshot every other group): nothing written.
SELECT sc_test.make_room('!grow:example.org', 60, 2500);
SELECT groups_changed, rows_before, rows_after, written FROM compress_room('!grow:example.org', levels => '2');
-- Groups left alone, with the reason: a group the levels would rewrite is pending
-- deletion; in another room a group has two predecessors.
SELECT sc_test.make_room('!frozen:example.org', 120, 2000, 100, 50);
INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) VALUES (2040, 0);
SELECT groups_changed, groups_skipped, written FROM compress_room('!frozen:example.org', levels => '40,20');
SELECT sc_test.make_room('!tangled:example.org', 30, 3000);
INSERT INTO state_group_edges VALUES (3020, 3005);
SELECT groups_changed, groups_skipped, written FROM compress_room('!tangled:example.org', levels => '10,5');
-- The worker is not loaded here: run_now() says so.
SELECT synapse_compress.run_now();

-- Admin functions: bad input.
SELECT synapse_compress.reset_room(NULL);
\echo SQLSTATE :SQLSTATE
SELECT synapse_compress.reset_room('!nope:example.org');
\echo SQLSTATE :SQLSTATE
SELECT synapse_compress.set_state_schema(NULL);
\echo SQLSTATE :SQLSTATE
SELECT synapse_compress.set_state_schema('no_such_schema');
\echo SQLSTATE :SQLSTATE
SELECT synapse_compress.set_state_schema('pg_catalog');
\echo SQLSTATE :SQLSTATE
SELECT state_schema FROM synapse_compress.control;
SET synapse_compress.lock_timeout = -1;
\echo SQLSTATE :SQLSTATE
-- compress_room that wrote inside a transaction block says how long its locks last.
SELECT sc_test.make_room('!txn:example.org', 300, 5000);
BEGIN;
SELECT groups_changed, written FROM compress_room('!txn:example.org');
ROLLBACK;
