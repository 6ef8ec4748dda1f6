-- Damaged data: compress_room (with its query for the room) and a scheduled run
-- (which finds every room's tangled groups in one scan of the edges, as every room has
-- work and one scan costs less than a query per room) leave exactly the tangled
-- groups as stored: all that a group of another room whose predecessor is in this room
-- reaches, and all that a group with two predecessors reaches. Every group keeps its
-- state.
-- data: --preset headline --scale 0.02 --seed 25
-- data: --preset small --seed 26 --first-id 100000
SET synapse_compress.chunk_pause = 0;
-- b: the big room (ids below 100000), which the run compresses; c: a small room.
SELECT room_id AS b FROM state_groups WHERE id = 1 \gset
SELECT room_id AS c FROM state_groups WHERE id > 100000 GROUP BY 1 ORDER BY count(*) DESC LIMIT 1 \gset
CREATE TEMP TABLE ids AS
  SELECT id, room_id, row_number() OVER (PARTITION BY room_id ORDER BY id) AS n FROM state_groups;
SELECT id AS y FROM ids WHERE room_id = :'b' AND n = 50 \gset
-- x: a group of room c with a predecessor, above y; it now follows y's chain instead.
SELECT min(i.id) AS x FROM ids i JOIN state_group_edges e ON e.state_group = i.id
  WHERE i.room_id = :'c' AND i.id > :y \gset
DELETE FROM state_group_edges WHERE state_group = :x;
INSERT INTO state_group_edges VALUES (:x, :y);
-- m: a group of room b with a second, lower predecessor.
SELECT id AS m FROM ids WHERE room_id = :'b' AND n = 800 \gset
SELECT sc_test.check(EXISTS (SELECT FROM state_group_edges WHERE state_group = :m), 'm has a predecessor');
INSERT INTO state_group_edges SELECT :m, id FROM ids WHERE room_id = :'b' AND n = 700;

-- What Synapse's read reaches from x and m: y's chain, m's two chains (all in room b).
CREATE TEMP TABLE tangled AS
  WITH RECURSIVE reached(id) AS (
      SELECT prev_state_group FROM state_group_edges WHERE state_group IN (:x, :m)
    UNION
      SELECT e.prev_state_group FROM state_group_edges e JOIN reached r ON e.state_group = r.id)
  SELECT id FROM reached;
SELECT sc_test.check((SELECT count(*) FROM tangled WHERE id <= :y) > 0
                 AND (SELECT count(*) FROM tangled WHERE id > :y) > 0
                 AND NOT EXISTS (SELECT FROM tangled t JOIN ids USING (id) WHERE room_id <> :'b'),
                     'y''s chain and m''s chains are tangled, all in room b');
CREATE TEMP TABLE tangled_before AS
  SELECT state_group, type, state_key, event_id FROM state_groups_state
  WHERE state_group IN (SELECT id FROM tangled);
CREATE TEMP TABLE tangled_edges_before AS
  SELECT * FROM state_group_edges WHERE state_group IN (SELECT id FROM tangled);
-- The tangled groups' rows and edges are as they were.
CREATE FUNCTION pg_temp.tangled_untouched() RETURNS boolean LANGUAGE sql AS $$
  SELECT NOT EXISTS (
      (SELECT * FROM tangled_before EXCEPT ALL
       SELECT state_group, type, state_key, event_id FROM state_groups_state
       WHERE state_group IN (SELECT id FROM tangled))
      UNION ALL
      (SELECT state_group, type, state_key, event_id FROM state_groups_state
       WHERE state_group IN (SELECT id FROM tangled)
       EXCEPT ALL SELECT * FROM tangled_before))
    AND NOT EXISTS (
      (SELECT * FROM tangled_edges_before EXCEPT
       SELECT * FROM state_group_edges WHERE state_group IN (SELECT id FROM tangled))
      UNION ALL
      (SELECT * FROM state_group_edges WHERE state_group IN (SELECT id FROM tangled)
       EXCEPT SELECT * FROM tangled_edges_before))
$$;
CALL sc_test.snapshot();

-- compress_room finds the same groups with its own query for the room (undone after).
BEGIN;
SELECT sc_test.check(written AND groups_skipped >= (SELECT count(*) FROM tangled),
                     'compress_room wrote, the tangled groups skipped') FROM compress_room(:'b');
CALL sc_test.assert_same_state();
SELECT sc_test.check(pg_temp.tangled_untouched(), 'compress_room left the tangled groups as stored');
ROLLBACK;

SELECT sc_test.rows_total() AS rows_before \gset
CALL compress_database();
SELECT sc_test.check(outcome = 'done' AND errors = 0, 'the run finished without errors')
  FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;
SELECT sc_test.check(sc_test.rows_total() < :rows_before, 'rows were saved');
SELECT sc_test.check(
  (SELECT groups_skipped FROM synapse_compress.room_queue WHERE room_id = :'b')
    >= (SELECT count(*) FROM tangled),
  'the tangled groups were skipped');
SELECT sc_test.check(rows_saved > 0 AND chunks_written > 0, 'room b was compressed around them')
  FROM synapse_compress.room_queue WHERE room_id = :'b';
CALL sc_test.assert_same_state();
SELECT sc_test.check(pg_temp.tangled_untouched(), 'the run left the tangled groups as stored');
