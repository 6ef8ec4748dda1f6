-- Scheduled runs without the background worker (this cluster does not preload the
-- library): CALL compress_database() does a worker's run in the foreground, one chunk
-- per transaction; it continues from compress_room's progress, never does a group
-- twice, and reset_room starts a room over. Bad input gets SQLSTATEs with hints.
-- data: --preset manyrooms --scale 0.01 --seed 41
-- data: --preset small --seed 42 --first-id 500000
-- data: --preset headline --scale 0.02 --seed 43 --first-id 700000
SET synapse_compress.chunk_pause = 0;
CALL sc_test.snapshot();
SELECT sc_test.check(NOT worker_registered AND workers_running = 0 AND next_run IS NULL,
                     'status: no worker without shared_preload_libraries') FROM synapse_compress.status;
SELECT sc_test.check(synapse_compress.run_now() = 0, 'run_now() wakes nobody, with a NOTICE');

-- compress_room saves its progress; the scheduled run continues after it.
SELECT room_id AS big FROM state_groups WHERE id >= 700000 LIMIT 1 \gset
SELECT sc_test.check(written, 'compress_room wrote') FROM compress_room(:'big');
SELECT sc_test.check(last_compressed = (SELECT max(id) FROM state_groups WHERE room_id = :'big'),
                     'compress_room saved its progress')
  FROM state_compressor_progress WHERE room_id = :'big';

CALL compress_database(max_chunks => 3);
SELECT sc_test.check(outcome = 'budget' AND chunks = 3, 'max_chunks bounds a run')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
CALL compress_database();
SELECT sc_test.check(outcome = 'done' AND source = 'procedure', 'the run finished')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
SELECT sc_test.check(rooms_pending = 0 AND rows_saved_total > 0, 'nothing pending, rows saved')
  FROM synapse_compress.status;
SELECT sc_test.check(
  (SELECT sum(groups) FROM synapse_compress.runs) =
  (SELECT count(*) FROM state_groups WHERE room_id <> :'big'),
  'every group went through exactly once, the big room not again');
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);

-- Nothing left: a run does no chunk.
CALL compress_database();
SELECT sc_test.check(chunks = 0 AND outcome = 'done', 'a second run finds nothing')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;

-- reset_room: the room is compressed again from its first group; state unchanged.
SELECT synapse_compress.reset_room(:'big');
SELECT sc_test.check(pending_groups > 0 AND compressed_up_to IS NULL AND levels IS NULL, 'reset_room forgot the room')
  FROM synapse_compress.rooms WHERE room_id = :'big';
CALL compress_database();
SELECT sc_test.check(pending_groups = 0 AND compressed_up_to IS NOT NULL, 'the room was done again')
  FROM synapse_compress.rooms WHERE room_id = :'big';
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);

-- Pause and resume persist in the control row (the worker reads it).
SELECT synapse_compress.pause();
SELECT sc_test.check(paused, 'paused') FROM synapse_compress.status;
SELECT synapse_compress.resume();
SELECT sc_test.check(NOT paused, 'resumed') FROM synapse_compress.status;

-- Bad input.
CALL sc_test.assert_error($$CALL compress_database(max_chunks => 0)$$, '22023');
CALL sc_test.assert_error($$CALL compress_database(time_budget => '-1 s')$$, '22023');
CALL sc_test.assert_error($$SELECT synapse_compress.reset_room('!nope:hs')$$, '42704');
CALL sc_test.assert_error($$SELECT synapse_compress.reset_room(NULL)$$, '22004');
CALL sc_test.assert_error($$SELECT * FROM synapse_compress.run_step(999999)$$, '22023');
CALL sc_test.assert_error($$SELECT synapse_compress.begin_run('cron')$$, '22023');
CALL sc_test.assert_error($$SELECT synapse_compress.end_run(1, 'bogus', NULL)$$, '22023');
CALL sc_test.assert_error($$SELECT synapse_compress.end_run(NULL, 'done', NULL)$$, '22004');

-- Nobody but superusers and granted roles may run or steer compression.
DROP ROLE IF EXISTS sc_test_nobody;
CREATE ROLE sc_test_nobody;
GRANT USAGE ON SCHEMA synapse_compress, sc_test TO sc_test_nobody;
SET ROLE sc_test_nobody;
CALL sc_test.assert_error($$CALL compress_database()$$, '42501', false);
CALL sc_test.assert_error($$SELECT synapse_compress.pause()$$, '42501', false);
CALL sc_test.assert_error($$SELECT synapse_compress.run_now()$$, '42501', false);
CALL sc_test.assert_error($$SELECT synapse_compress.reset_room('x')$$, '42501', false);
CALL sc_test.assert_error($$SELECT * FROM synapse_compress.status$$, '42501', false);
RESET ROLE;
DROP OWNED BY sc_test_nobody;
DROP ROLE sc_test_nobody;
