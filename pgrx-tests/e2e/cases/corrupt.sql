-- The data admins really have: purged predecessors, cycles, two or higher predecessors,
-- duplicate rows, groups without rows, pending deletion. Reported and skipped,
-- never fatal; every group keeps its state; nothing frozen is touched.
-- data: --preset small --scale 5 --seed 23
-- data: --preset headline --scale 0.02 --seed 24 --first-id 20000
SELECT room_id AS room FROM state_groups_state GROUP BY 1 ORDER BY count(*) DESC LIMIT 1 \gset
CREATE TEMP TABLE ids AS
  SELECT id, row_number() OVER (ORDER BY id) AS n FROM state_groups WHERE room_id = :'room';
SELECT count(*) AS total FROM ids \gset
SELECT sc_test.check(:total > 200, 'the room is big enough');
-- Purged predecessor (pre-1.124 purge, no de-delta): the group vanishes, children keep the edge.
DELETE FROM state_groups_state WHERE state_group = (SELECT id FROM ids WHERE n = 40);
DELETE FROM state_group_edges WHERE state_group = (SELECT id FROM ids WHERE n = 40);
DELETE FROM state_groups WHERE id = (SELECT id FROM ids WHERE n = 40);
-- A cycle.
INSERT INTO state_group_edges SELECT (SELECT id FROM ids WHERE n = 60), (SELECT id FROM ids WHERE n = 70);
INSERT INTO state_group_edges SELECT (SELECT id FROM ids WHERE n = 70), (SELECT id FROM ids WHERE n = 60)
  ON CONFLICT DO NOTHING;
-- Two predecessors.
INSERT INTO state_group_edges SELECT (SELECT id FROM ids WHERE n = 90), (SELECT id FROM ids WHERE n = 1)
  ON CONFLICT DO NOTHING;
-- A predecessor with a higher id: group 200 resolves from 230's whole chain, highest
-- id first, so 230 and everything it reaches must stay as stored.
DELETE FROM state_group_edges WHERE state_group = (SELECT id FROM ids WHERE n = 200);
INSERT INTO state_group_edges SELECT (SELECT id FROM ids WHERE n = 200), (SELECT id FROM ids WHERE n = 230);
-- Exact duplicate rows, and conflicting duplicates.
INSERT INTO state_groups_state SELECT * FROM state_groups_state WHERE state_group = (SELECT id FROM ids WHERE n = 110);
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT id, :'room', 'm.room.topic', '', '$conflict' || g FROM ids, generate_series(1, 2) g WHERE n = 130;
-- A group without rows.
DELETE FROM state_groups_state WHERE state_group = (SELECT id FROM ids WHERE n = 150);
-- Pending deletion and being persisted.
INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) SELECT id, 0 FROM ids WHERE n = 170;
INSERT INTO state_groups_persisting (state_group, instance_name) SELECT id, 'master' FROM ids WHERE n = 180;

CALL sc_test.snapshot();
CREATE TEMP TABLE frozen_before AS
  SELECT state_group, type, state_key, event_id FROM state_groups_state
  WHERE state_group IN (SELECT id FROM ids WHERE n IN (60, 70, 90, 130, 170, 180, 200, 230));
CREATE TEMP TABLE r AS SELECT * FROM compress_room(:'room');
SELECT * FROM r;
SELECT sc_test.check(written AND groups_skipped >= 8, 'written, with the damaged groups skipped') FROM r;
CALL sc_test.assert_same_state();
SELECT sc_test.check(NOT EXISTS (
  (SELECT * FROM frozen_before EXCEPT ALL
   SELECT state_group, type, state_key, event_id FROM state_groups_state
   WHERE state_group IN (SELECT id FROM ids WHERE n IN (60, 70, 90, 130, 170, 180, 200, 230)))
  UNION ALL
  (SELECT state_group, type, state_key, event_id FROM state_groups_state
   WHERE state_group IN (SELECT id FROM ids WHERE n IN (60, 70, 90, 130, 170, 180, 200, 230))
   EXCEPT ALL SELECT * FROM frozen_before)), 'skipped groups untouched');
