-- Bad input: a clear error with SQLSTATE and hint, and nothing written.
-- data: --preset headline --scale 0.01 --seed 3
SELECT sc_test.raw_digest() AS raw0 \gset
SELECT room_id AS room FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1 \gset
CALL sc_test.assert_error($$SELECT * FROM compress_room('!nope:example.org')$$, '42704');
CALL sc_test.assert_error($$SELECT * FROM compress_room('''); DROP TABLE state_groups; --')$$, '42704');
CALL sc_test.assert_error($$SELECT * FROM compress_room(E'!\\x01\t\n:é')$$, '42704');
INSERT INTO rooms (room_id, is_public) VALUES ('!empty:example.org', false);
CALL sc_test.assert_error($$SELECT * FROM compress_room('!empty:example.org')$$, 'P0002');
CALL sc_test.assert_error($$SELECT * FROM compress_room(NULL)$$, '22004');
CALL sc_test.assert_error($$SELECT * FROM compress_room('')$$, '22023');
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L, levels => NULL)$$, :'room'), '22004');
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L, dry_run => NULL)$$, :'room'), '22004');
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L, min_saved_rows => NULL)$$, :'room'), '22004');
SET sc.room = :'room';
DO $$
DECLARE lv text;
BEGIN
  FOREACH lv IN ARRAY ARRAY['', ' ', '0', '-1', 'a,b', '100,,25', '1.5', '99999999999', '100000',
                            '2,2,2,2,2,2,2,2,2,2,2'] LOOP
    CALL sc_test.assert_error(format('SELECT * FROM compress_room(%L, levels => %L)', current_setting('sc.room'), lv), '22023');
  END LOOP;
END $$;
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L, min_saved_rows => -1)$$, :'room'), '22023');
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L, after_group => -1)$$, :'room'), '22023');
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L, max_groups => 0)$$, :'room'), '22023');
CALL sc_test.assert_error($$SET synapse_compress.chunk_size = 0$$, '22023', need_hint => false);
SELECT sc_test.check(to_regclass('state_groups') IS NOT NULL, 'state_groups still exists');
SELECT sc_test.check(sc_test.raw_digest() = :'raw0', 'nothing written by any failed call');
DELETE FROM rooms WHERE room_id = '!empty:example.org';

-- Privileges: not executable by PUBLIC.
SELECT sc_test.check(NOT has_function_privilege('public', 'compress_room(text,text,boolean,bigint,bigint,bigint)', 'EXECUTE'),
                     'PUBLIC cannot execute compress_room');
DROP ROLE IF EXISTS sc_test_nobody;
CREATE ROLE sc_test_nobody;
GRANT USAGE ON SCHEMA sc_test TO sc_test_nobody;
SET ROLE sc_test_nobody;
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L)$$, :'room'), '42501', need_hint => false);
RESET ROLE;
REVOKE USAGE ON SCHEMA sc_test FROM sc_test_nobody;
DROP ROLE sc_test_nobody;

-- Two compressions of one room never interleave: the second gets lock_not_available.
CREATE EXTENSION dblink;
SELECT dblink_connect('other', format('dbname=%s port=%s host=%s user=postgres', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('other', 'BEGIN');
SELECT * FROM dblink('other', format('SELECT pg_advisory_xact_lock(hashtext(%L), hashtext(%L))::text',
                                     'synapse_compress', :'room')) AS t(x text);
CALL sc_test.assert_error(format($$SELECT * FROM compress_room(%L)$$, :'room'), '55P03');
SELECT dblink_exec('other', 'ROLLBACK');
SELECT dblink_disconnect('other');
SELECT sc_test.check(sc_test.raw_digest() = :'raw0', 'nothing written');
-- A dry run needs no lock and still works.
SELECT sc_test.check(written = false, 'dry run') FROM compress_room(:'room', dry_run => true);
