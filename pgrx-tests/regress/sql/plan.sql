-- plan_room and plan_room_json: what a caller reads when the input is wrong (each
-- ERROR's message, HINT and SQLSTATE), and that none of them wrote anything.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT sc_test.make_room('!p:example.org', 120, 10001);
SELECT sc_test.raw_digest() AS raw0 \gset
SELECT * FROM plan_room('!nope:example.org');
\echo SQLSTATE :SQLSTATE
SELECT plan_room_json('!nope:example.org');
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('!p:example.org', levels => '100,,25');
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('!p:example.org', levels => '0');
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('!p:example.org', after_group => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('!p:example.org', max_groups => -5);
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('!p:example.org', max_groups => 0);
\echo SQLSTATE :SQLSTATE
SELECT * FROM plan_room('!p:example.org', after_group => NULL);
\echo SQLSTATE :SQLSTATE
SELECT plan_room_json('!p:example.org', levels => 'a,b');
\echo SQLSTATE :SQLSTATE
SELECT sc_test.raw_digest() = :'raw0' AS nothing_written;
-- A readable plan: the room's groups 10001 .. 10120 (a snapshot every 100) on small levels;
-- their cycle is 4 x 3 groups, so the 13th starts a new tree.
SELECT state_group, old_prev, new_prev, rows_before, rows_after, depth, action, reason
  FROM plan_room('!p:example.org', '4,3', max_groups => 13);
SELECT jsonb_pretty(plan_room_json('!p:example.org', '4,3', after_group => 10098, max_groups => 3));
-- Not executable by PUBLIC.
SELECT has_function_privilege('public', 'plan_room(text,text,bigint,bigint)', 'EXECUTE') AS public_plan,
       has_function_privilege('public', 'plan_room_json(text,text,bigint,bigint)', 'EXECUTE') AS public_json;
SELECT sc_test.raw_digest() = :'raw0' AS nothing_written;
