-- Re-compression of what Synapse de-deltas (issue 12, item 1), below the rooms'
-- progress; the next scheduled run finds such groups (state_groups lost rows) and
-- compresses them again, every group's state kept.
-- A. 10% of the groups de-deltaed (made full snapshots, their predecessors kept) and
--    some unreferenced groups deleted: rows come back close to the first run's.
-- B. Synapse's deletion as it is: groups deleted and their surviving children
--    de-deltaed (~10% of the groups). The deleted groups were bases the first tree
--    used, so the reference is the rooms run again from their start (see below): the
--    next run comes within 5% of it.
-- Prints the figures: rows before, after the first run, after each de-delta, after
-- the next run, and the time of a run on an unchanged database.
-- data: --preset headline --scale 0.03 --seed 61
-- data: --preset manyrooms --scale 0.01 --seed 62 --first-id 500000
SET synapse_compress.chunk_pause = 0;

-- Turn the groups of sc_test.dedelta_these into full snapshots (Synapse's de-delta),
-- delete those of sc_test.delete_these, in one transaction (as Synapse's loop).
CREATE TABLE sc_test.dedelta_these (sg bigint PRIMARY KEY);
CREATE TABLE sc_test.delete_these (sg bigint PRIMARY KEY);
CREATE PROCEDURE sc_test.dedelta() LANGUAGE plpgsql AS $$
BEGIN
  CREATE TEMP TABLE full_rows ON COMMIT DROP AS
    SELECT s.sg, g.room_id, r.type, r.state_key, r.event_id
    FROM sc_test.dedelta_these s JOIN state_groups g ON g.id = s.sg, LATERAL sc_test.resolve(s.sg) r;
  DELETE FROM state_group_edges WHERE state_group IN (SELECT sg FROM sc_test.dedelta_these);
  DELETE FROM state_groups_state WHERE state_group IN (SELECT sg FROM sc_test.dedelta_these);
  INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
    SELECT sg, room_id, type, state_key, event_id FROM full_rows;
  DELETE FROM state_group_edges WHERE state_group IN (SELECT sg FROM sc_test.delete_these);
  DELETE FROM state_groups_state WHERE state_group IN (SELECT sg FROM sc_test.delete_these);
  DELETE FROM state_groups WHERE id IN (SELECT sg FROM sc_test.delete_these);
  DELETE FROM sc_test.before WHERE state_group IN (SELECT sg FROM sc_test.delete_these);
END $$;
-- Wait until the statistics collector shows state_groups' deletions (this session's
-- are flushed when it goes idle after pg_stat_force_next_flush()).
CREATE PROCEDURE sc_test.await_deleted(above bigint) LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  FOR i IN 1..300 LOOP
    PERFORM pg_stat_clear_snapshot();
    SELECT n_tup_del INTO n FROM pg_stat_user_tables WHERE relid = 'state_groups'::regclass;
    IF n > above THEN RETURN; END IF;
    PERFORM pg_sleep(0.1);
  END LOOP;
  RAISE EXCEPTION 'state_groups'' deletions never reached the statistics (n_tup_del %)', n;
END $$;

CALL sc_test.snapshot();
SELECT sc_test.rows_total() AS rows_start, count(*) AS groups_start FROM state_groups \gset
CALL compress_database();
SELECT sc_test.rows_total() AS rows_first \gset
SELECT sc_test.check(:rows_first < :rows_start, 'the first run compressed');
CALL sc_test.assert_same_state();

-- Unchanged database: the run does no chunk and no de-delta scan.
SELECT groups_deleted_seen AS seen FROM synapse_compress.control \gset
SELECT clock_timestamp() AS t0 \gset
CALL compress_database();
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000, 1) AS unchanged_ms \gset
SELECT sc_test.check(chunks = 0, 'an unchanged database: no chunk')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
SELECT sc_test.check(groups_deleted_seen IS NOT DISTINCT FROM :'seen'::bigint AND late_floor > 0,
                     'an unchanged database: the counter did not move')
  FROM synapse_compress.control;

-- A. 10% of the groups with an edge (a fixed pseudo-random pick) de-deltaed, 1% of the
-- unreferenced ones deleted.
SELECT n_tup_del AS del_before FROM pg_stat_user_tables WHERE relid = 'state_groups'::regclass \gset
INSERT INTO sc_test.dedelta_these
  SELECT state_group FROM state_group_edges ORDER BY md5(state_group::text) LIMIT :groups_start / 10;
INSERT INTO sc_test.delete_these
  SELECT g.id FROM state_groups g
  WHERE NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.prev_state_group = g.id)
    AND g.id NOT IN (SELECT sg FROM sc_test.dedelta_these)
  ORDER BY md5(g.id::text || 'x') LIMIT :groups_start / 100;
CALL sc_test.dedelta();
SELECT pg_stat_force_next_flush();
CALL sc_test.await_deleted(:del_before);
SELECT (SELECT count(*) FROM sc_test.dedelta_these) AS dedeltaed, sc_test.rows_total() AS rows_dedelta \gset
SELECT sc_test.check(:dedeltaed * 10 = :groups_start / 10 * 10, '10% of the groups were de-deltaed');
SELECT sc_test.check(:rows_dedelta > :rows_first * 2, 'the de-delta grew the rows');

-- The next scheduled run brings the rows back down.
CALL compress_database();
SELECT sc_test.rows_total() AS rows_next \gset
SELECT sc_test.check(chunks > 0, 'the next run compressed again')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
-- A de-deltaed group lost its stored predecessor, which the planner's branch choice
-- follows in rooms with forks; its recent choice finds a base among the last groups
-- instead. Measured: +4.5% (20671 vs 19786 rows; before the levels started at a room's
-- first group, +4.2%, and +5.6% without the recent choice).
SELECT sc_test.check(:rows_next <= :rows_first * 1.05,
                     format('rows back within 5%% of the first run''s result (%s vs %s)', :rows_next, :rows_first));
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);

-- Then nothing more to do: its own snapshots are not taken for de-deltas.
CALL compress_database();
SELECT sc_test.check(chunks = 0, 'the run after finds nothing')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
-- A scan with nothing new (forced: the counter is made to differ) sends no room back.
UPDATE synapse_compress.control SET groups_deleted_seen = -1;
CALL compress_database();
SELECT sc_test.check(chunks = 0 AND groups_deleted_seen >= 0, 'a scan finds no de-delta in what runs left')
  FROM synapse_compress.runs, synapse_compress.control ORDER BY run_id DESC LIMIT 1;
SELECT sc_test.check(count(*) = 0, 'every snapshot below a room''s progress is recorded')
  FROM state_groups g JOIN state_compressor_progress p ON p.room_id = g.room_id AND g.id <= p.last_compressed
  WHERE NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.state_group = g.id)
    AND NOT EXISTS (SELECT 1 FROM synapse_compress.room_snapshots k WHERE k.state_group = g.id);

-- B. Synapse's deletion: doomed groups (picked in a fixed pseudo-random order until
-- their children are ~10% of the groups) deleted, their surviving children de-deltaed.
TRUNCATE sc_test.dedelta_these, sc_test.delete_these;
SELECT n_tup_del AS del_before FROM pg_stat_user_tables WHERE relid = 'state_groups'::regclass \gset
SELECT count(*) AS groups_b FROM state_groups \gset
INSERT INTO sc_test.delete_these
  SELECT d FROM (SELECT d, sum(n) OVER (ORDER BY md5(d::text)) AS c
                 FROM (SELECT prev_state_group AS d, count(*) AS n FROM state_group_edges GROUP BY 1) k) k
  WHERE c <= :groups_b / 10;
INSERT INTO sc_test.dedelta_these
  SELECT e.state_group FROM state_group_edges e
  WHERE e.prev_state_group IN (SELECT sg FROM sc_test.delete_these)
    AND e.state_group NOT IN (SELECT sg FROM sc_test.delete_these);
CALL sc_test.dedelta();
SELECT pg_stat_force_next_flush();
CALL sc_test.await_deleted(:del_before);
SELECT (SELECT count(*) FROM sc_test.dedelta_these) AS dedeltaed_b, (SELECT count(*) FROM sc_test.delete_these) AS deleted_b,
       sc_test.rows_total() AS rows_dedelta_b \gset
SELECT sc_test.check(:dedeltaed_b * 20 >= :groups_b, 'B: at least 5% of the groups were de-deltaed');
CALL compress_database();
SELECT sc_test.rows_total() AS rows_next_b \gset
SELECT sc_test.check(count(*) = 0, 'B: no snapshot recorded for a group Synapse deleted')
  FROM synapse_compress.room_snapshots k
  WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = k.state_group);
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
-- The reference: every room run again from its first group with fresh levels (over
-- the data as the next run left it, so the edges it wrote inform the branch choice:
-- a weak reference; a copy of the de-deltaed data compressed from scratch would be
-- the strong one).
SELECT count(*) FROM (SELECT synapse_compress.reset_room(room_id) FROM (SELECT DISTINCT room_id FROM state_groups) r) x;
CALL compress_database();
SELECT sc_test.rows_total() AS rows_scratch_b \gset
SELECT sc_test.check(:rows_next_b <= :rows_scratch_b * 1.05,
                     format('B: rows within 5%% of a compression from scratch (%s vs %s)', :rows_next_b, :rows_scratch_b));

\echo FIGURE redelta A: groups :groups_start, de-deltaed :dedeltaed; rows :rows_start -> first run :rows_first -> de-delta :rows_dedelta -> next run :rows_next; unchanged run :unchanged_ms ms
\echo FIGURE redelta B: deleted :deleted_b, de-deltaed :dedeltaed_b; rows -> de-delta :rows_dedelta_b -> next run :rows_next_b (from scratch :rows_scratch_b)
