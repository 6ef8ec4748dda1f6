-- Per-room control (synapse_compress.room_settings) honoured by a scheduled run (CALL
-- compress_database(), the worker's code path): an excluded room is left alone and
-- counted, a room with a higher priority goes first, a room's own levels are used;
-- compress_room still compresses an excluded room (an explicit request). The rooms
-- view shows the settings. Bad input gets SQLSTATEs with hints and writes nothing.
-- data: --preset small --seed 51
-- data: --preset small --seed 52 --first-id 100000
SET synapse_compress.chunk_pause = 0;
SET synapse_compress.chunk_size = 60;
CALL sc_test.snapshot();
-- A run that does no chunk fills the room queue (the rooms view's rows).
SELECT synapse_compress.end_run(synapse_compress.begin_run('procedure'), 'done', NULL);
SELECT room_id AS ex FROM state_groups WHERE id >= 100000 GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1 \gset
SELECT room_id AS pri FROM state_groups WHERE id >= 100000 GROUP BY 1 ORDER BY count(*), 1 LIMIT 1 \gset
SELECT room_id AS lv FROM state_groups WHERE id < 100000 GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1 \gset
SELECT sc_test.check(count(DISTINCT r) = 3, 'three different rooms') FROM unnest(ARRAY[:'ex', :'pri', :'lv']) r;

-- Bad input: nothing written.
CALL sc_test.assert_error($$SELECT synapse_compress.exclude_room('!nope:hs')$$, '42704');
CALL sc_test.assert_error($$SELECT synapse_compress.include_room(NULL)$$, '22004');
CALL sc_test.assert_error($$SELECT synapse_compress.exclude_room('')$$, '22023');
CALL sc_test.assert_error($$SELECT synapse_compress.set_room_priority('!nope:hs', 1)$$, '42704');
CALL sc_test.assert_error(format($$SELECT synapse_compress.set_room_priority(%L, NULL)$$, :'pri'), '22004');
CALL sc_test.assert_error(format($$SELECT synapse_compress.set_room_levels(%L, '100,0')$$, :'lv'), '22023');
CALL sc_test.assert_error(format($$SELECT synapse_compress.set_room_levels(%L, 'abc')$$, :'lv'), '22023');
CALL sc_test.assert_error($$SELECT synapse_compress.set_room_levels('!nope:hs', '10')$$, '42704');
SELECT sc_test.check(count(*) = 0, 'failed calls wrote nothing') FROM synapse_compress.room_settings;

SELECT synapse_compress.exclude_room(:'ex');
SELECT synapse_compress.set_room_priority(:'pri', 5);
SELECT synapse_compress.set_room_levels(:'lv', ' 10, 5 ');
SELECT sc_test.check(excluded AND priority = 0 AND levels_setting IS NULL, 'rooms view: excluded')
  FROM synapse_compress.rooms WHERE room_id = :'ex';
SELECT sc_test.check(NOT excluded AND priority = 5, 'rooms view: priority')
  FROM synapse_compress.rooms WHERE room_id = :'pri';
SELECT sc_test.check(levels_setting = '10,5', 'rooms view: levels, stored the canonical way')
  FROM synapse_compress.rooms WHERE room_id = :'lv';
SELECT sc_test.check(count(*) = 0, 'rooms without settings show the defaults')
  FROM synapse_compress.rooms WHERE room_id NOT IN (:'ex', :'pri', :'lv')
   AND (excluded OR priority <> 0 OR levels_setting IS NOT NULL);

CALL compress_database();
SELECT run_id AS run FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1 \gset
SELECT sc_test.check(outcome = 'done' AND rooms_excluded = 1, 'the run finished, one room excluded')
  FROM synapse_compress.runs WHERE run_id = :run;
SELECT sc_test.check(pending_groups > 0 AND chunks_written = 0 AND compressed_up_to IS NULL,
                     'the excluded room was left alone')
  FROM synapse_compress.rooms WHERE room_id = :'ex';
SELECT sc_test.check(count(*) = 0, 'every other room compressed')
  FROM synapse_compress.rooms WHERE room_id <> :'ex' AND pending_groups > 0;
-- One chunk per transaction, rooms one after the other: the priority room's last
-- chunk came before every other room's first one in this run.
SELECT sc_test.check((SELECT last_chunk_at FROM synapse_compress.room_queue WHERE room_id = :'pri')
                     < min(last_chunk_at), 'the priority room went first')
  FROM synapse_compress.room_queue WHERE room_id <> :'pri' AND last_chunk_at IS NOT NULL;
SELECT sc_test.check(string_agg(max_size::text, ',' ORDER BY level_num) = '10,5',
                     'the room was compressed with its own levels')
  FROM state_compressor_state WHERE room_id = :'lv';
SELECT sc_test.check(string_agg(max_size::text, ',' ORDER BY level_num) = '100,50,25',
                     'the others with synapse_compress.levels')
  FROM state_compressor_state WHERE room_id = :'pri';
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);

-- An explicit compress_room is not a scheduled run: it compresses the excluded room.
-- (Whether it writes depends on the room: these small forked ones may not pay.)
SELECT sc_test.check(state_groups > 0 AND rows_before > 0, 'compress_room still works on an excluded room')
  FROM compress_room(:'ex');
SELECT synapse_compress.reset_room(:'ex');

-- Included again, and levels back to the default: the next run takes it.
SELECT synapse_compress.include_room(:'ex');
SELECT synapse_compress.set_room_levels(:'lv', NULL);
SELECT sc_test.check(NOT excluded, 'included') FROM synapse_compress.rooms WHERE room_id = :'ex';
SELECT sc_test.check(levels_setting IS NULL, 'levels back to the default')
  FROM synapse_compress.rooms WHERE room_id = :'lv';
CALL compress_database();
SELECT sc_test.check(rooms_excluded = 0 AND outcome = 'done', 'nothing excluded')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
SELECT sc_test.check(count(*) = 0, 'nothing pending') FROM synapse_compress.rooms WHERE pending_groups > 0;
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);

-- Only superusers and granted roles.
DROP ROLE IF EXISTS sc_test_nobody;
CREATE ROLE sc_test_nobody;
GRANT USAGE ON SCHEMA synapse_compress, sc_test TO sc_test_nobody;
SET ROLE sc_test_nobody;
CALL sc_test.assert_error(format($$SELECT synapse_compress.exclude_room(%L)$$, :'ex'), '42501', false);
CALL sc_test.assert_error(format($$SELECT synapse_compress.include_room(%L)$$, :'ex'), '42501', false);
CALL sc_test.assert_error(format($$SELECT synapse_compress.set_room_priority(%L, 1)$$, :'ex'), '42501', false);
CALL sc_test.assert_error(format($$SELECT synapse_compress.set_room_levels(%L, '10')$$, :'ex'), '42501', false);
CALL sc_test.assert_error($$SELECT * FROM synapse_compress.room_settings$$, '42501', false);
RESET ROLE;
DROP OWNED BY sc_test_nobody;
DROP ROLE sc_test_nobody;
