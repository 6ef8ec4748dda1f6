-- Groups that commit late (issue 12, item 1): Synapse takes a group's id from the
-- sequence before its transaction commits, so a group with a lower id can become
-- visible after a run has passed it. Made deterministic with a second session
-- (dblink): it takes an id and inserts the group in an open transaction, a scheduled
-- run compresses the room past that id, the session commits; the next run finds the
-- group (its xmin was not visible in the snapshot the previous run started from) and
-- compresses it, every group's state kept. (The id was missing when that run started;
-- the next start finds it present.)
-- data: --preset small --seed 71
SET synapse_compress.chunk_pause = 0;
SELECT NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'dblink') AS no_dblink \gset
\if :no_dblink
\echo SKIPPED: dblink is not installed on this server
\quit
\endif
SELECT sc_test.connect('late');

-- A first run: late commits are tracked from there on.
CALL compress_database();
-- The room with the most groups, and its newest group.
SELECT room_id AS room, max(id) AS head FROM state_groups GROUP BY room_id ORDER BY count(*) DESC LIMIT 1 \gset
-- The other session: an id from the sequence, then the group (a delta on the room's
-- newest group, as Synapse writes it) in a transaction it leaves open.
SELECT dblink_exec('late', 'BEGIN');
SELECT id AS late FROM dblink('late', 'SELECT nextval(''state_group_id_seq'')') AS t(id bigint) \gset
-- Groups created after it (committed at once) push the room's progress past it.
SELECT setval('state_group_id_seq', :late + 10);
INSERT INTO state_groups (id, room_id, event_id)
  SELECT :late + i, :'room', '$after' || i FROM generate_series(1, 5) i;
INSERT INTO state_group_edges (state_group, prev_state_group)
  SELECT :late + i, CASE WHEN i = 1 THEN :head ELSE :late + i - 1 END FROM generate_series(1, 5) i;
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT :late + i, :'room', 'm.room.member', '@after' || i || ':example.org', '$m' || i FROM generate_series(1, 5) i;
-- The late group is a full snapshot of the newest group's state (as Synapse writes
-- one every 100 groups): the compressor makes it a delta.
CREATE TABLE sc_test.late_state AS
  SELECT * FROM sc_test.resolve(:head);
SELECT dblink_exec('late', format(
  'INSERT INTO state_groups (id, room_id, event_id) VALUES (%s, %L, %L); '
  'INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) '
  '  SELECT %s, %L, type, state_key, event_id FROM sc_test.late_state',
  :late, :'room', '$late', :late, :'room'));

CALL sc_test.snapshot();
CALL compress_database();
SELECT last_compressed AS passed FROM state_compressor_progress WHERE room_id = :'room' \gset
SELECT sc_test.check(:passed > :late, 'the run passed the id still in flight');
SELECT dblink_exec('late', 'COMMIT');
SELECT dblink_disconnect('late');
-- The late group, a full snapshot, not compressed yet.
SELECT count(*) AS late_rows FROM state_groups_state WHERE state_group = :late \gset
SELECT sc_test.check(:late_rows > 1, 'the late group committed with its rows');
CALL sc_test.snapshot();

-- The next run finds it and compresses it.
CALL compress_database();
SELECT sc_test.check(chunks > 0, 'the next run compressed the room again')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
SELECT count(*) AS late_rows_after FROM state_groups_state WHERE state_group = :late \gset
SELECT sc_test.check(:late_rows_after < :late_rows,
                     format('the late group was compressed (%s rows -> %s)', :late_rows, :late_rows_after));
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
-- Then it is settled: another run finds nothing.
CALL compress_database();
SELECT sc_test.check(chunks = 0, 'the run after finds nothing')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;

-- A transaction that has taken an id and not inserted yet has no transaction id, so
-- it is in no snapshot: the snapshot rule alone would settle its id at the next run
-- start and drop it. Ids stay tracked for 10 minutes (LATE_SETTLE) as well.
SELECT sc_test.connect('late2');
SELECT dblink_exec('late2', 'BEGIN');
SELECT id AS late2 FROM dblink('late2', 'SELECT nextval(''state_group_id_seq'')') AS t(id bigint) \gset
SELECT max(id) AS head2 FROM state_groups WHERE room_id = :'room' \gset
SELECT setval('state_group_id_seq', :late2 + 10);
INSERT INTO state_groups (id, room_id, event_id)
  SELECT :late2 + i, :'room', '$after2_' || i FROM generate_series(1, 5) i;
INSERT INTO state_group_edges (state_group, prev_state_group)
  SELECT :late2 + i, CASE WHEN i = 1 THEN :head2 ELSE :late2 + i - 1 END FROM generate_series(1, 5) i;
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT :late2 + i, :'room', 'm.room.member', '@after2_' || i || ':example.org', '$m2_' || i FROM generate_series(1, 5) i;
CALL compress_database();
CALL compress_database();
SELECT sc_test.check(:late2 = ANY (late_gaps) AND late_floor < :late2,
                     'an id taken without an insert is still tracked two run starts later')
  FROM synapse_compress.control;
CREATE TABLE sc_test.late_state2 AS
  SELECT * FROM sc_test.resolve(:head2);
SELECT dblink_exec('late2', format(
  'INSERT INTO state_groups (id, room_id, event_id) VALUES (%s, %L, %L); '
  'INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) '
  '  SELECT %s, %L, type, state_key, event_id FROM sc_test.late_state2',
  :late2, :'room', '$late2', :late2, :'room'));
SELECT dblink_exec('late2', 'COMMIT');
SELECT dblink_disconnect('late2');
CALL sc_test.snapshot();
SELECT count(*) AS late2_rows FROM state_groups_state WHERE state_group = :late2 \gset
CALL compress_database();
SELECT count(*) AS late2_rows_after FROM state_groups_state WHERE state_group = :late2 \gset
SELECT sc_test.check(:late2_rows_after < :late2_rows,
                     format('the group inserted late after its id was taken was compressed (%s rows -> %s)', :late2_rows, :late2_rows_after));
CALL sc_test.assert_same_state();
-- Ten minutes later (the recorded start made older) the floor moves up to the start
-- recorded then, which is replaced by the current one; ten minutes after that, past it.
SELECT late_floor AS floor_before FROM synapse_compress.control \gset
UPDATE synapse_compress.control SET late_at = late_at - interval '11 minutes';
CALL compress_database();
SELECT sc_test.check(late_floor > :floor_before AND late_upto >= :late2,
                     'after 10 minutes the floor moves up, and the current start is recorded')
  FROM synapse_compress.control;
UPDATE synapse_compress.control SET late_at = late_at - interval '11 minutes';
CALL compress_database();
SELECT sc_test.check(late_floor >= :late2 AND NOT :late2 = ANY (late_gaps),
                     'ten minutes later the ids are settled') FROM synapse_compress.control;

\echo FIGURE late_commit: group :late committed after a run passed it (progress :passed); rows :late_rows -> :late_rows_after; group :late2 inserted after two run starts: rows :late2_rows -> :late2_rows_after
