-- plan_room: the dry run group by group. Its rows sum to the dry run's, on clean rooms
-- and on damaged ones (skipped groups), for whole rooms and bounded ranges; it writes
-- nothing and takes no row locks; the real run lands on the plan's rows; the JSON tree
-- says the same.
-- data: --preset small --scale 3 --seed 31
-- data: --preset headline --scale 0.01 --seed 32 --first-id 30000
SELECT sc_test.raw_digest() AS raw0 \gset
SELECT room_id AS room FROM state_groups_state GROUP BY 1 ORDER BY count(*) DESC LIMIT 1 \gset
-- Damage the biggest room so some groups are skipped: two predecessors, pending deletion.
CREATE TEMP TABLE ids AS
  SELECT id, row_number() OVER (ORDER BY id) AS n FROM state_groups WHERE room_id = :'room';
SELECT sc_test.check(count(*) > 150, 'the room is big enough') FROM ids;
INSERT INTO state_group_edges SELECT (SELECT id FROM ids WHERE n = 90), (SELECT id FROM ids WHERE n = 1)
  ON CONFLICT DO NOTHING;
INSERT INTO state_groups_pending_deletion (state_group, insertion_ts) SELECT id, 0 FROM ids WHERE n = 120;
SELECT sc_test.raw_digest() AS raw0 \gset

-- Every room, whole: the plan agrees with the dry run on every figure it shares.
CREATE TEMP TABLE disagree AS
SELECT r.room_id, d.state_groups, p.n, d.rows_before, p.before, d.rows_after, p.after,
       d.groups_changed, p.rewritten, d.groups_skipped, p.skipped
FROM (SELECT DISTINCT room_id FROM state_groups) r,
     LATERAL compress_room(r.room_id, levels => '100,50,25', dry_run => true) d,
     LATERAL (SELECT count(*) n, sum(rows_before) before, sum(rows_after) after,
                     count(*) FILTER (WHERE action = 'rewritten') rewritten,
                     count(*) FILTER (WHERE action = 'skipped') skipped
              FROM plan_room(r.room_id, '100,50,25', max_groups => 1000000)) p
WHERE (d.state_groups, d.rows_before, d.rows_after, d.groups_changed, d.groups_skipped)
      IS DISTINCT FROM (p.n, p.before, p.after, p.rewritten, p.skipped);
SELECT * FROM disagree;
SELECT sc_test.check(count(*) = 0, 'plan_room sums to the dry run in every room') FROM disagree;
SELECT sc_test.check(count(DISTINCT room_id) > 3, 'several rooms') FROM state_groups;

-- The damaged room: skipped groups say why, and keep their rows and predecessor.
SELECT sc_test.check(count(*) >= 2, 'damaged groups are skipped')
  FROM plan_room(:'room', '100,50,25') p JOIN ids ON ids.id = p.state_group
 WHERE ids.n IN (90, 120) AND p.action = 'skipped' AND p.reason <> ''
   AND p.rows_after = p.rows_before AND p.depth IS NULL;
SELECT sc_test.check(bool_and(reason <> '') AND bool_and(action IN ('kept', 'rewritten', 'skipped'))
                     AND bool_and(action = 'skipped' OR depth <= 175)
                     AND bool_and(action = 'rewritten' OR new_prev IS NOT DISTINCT FROM old_prev),
                     'every row is well-formed')
  FROM plan_room(:'room', '100,50,25');

-- A bounded range, other levels: still the dry run's sums.
SELECT sc_test.check(p.n = d.state_groups AND p.after = d.rows_after AND p.first > (SELECT id FROM ids WHERE n = 40),
                     'after_group/max_groups/levels as the dry run')
  FROM compress_room(:'room', levels => '20,10', dry_run => true,
                     after_group => (SELECT id FROM ids WHERE n = 40), max_groups => 70) d,
       (SELECT count(*) n, sum(rows_after) after, min(state_group) first
          FROM plan_room(:'room', '20,10', (SELECT id FROM ids WHERE n = 40), 70)) p;
-- levels NULL is synapse_compress.levels (a server setting).
SELECT sc_test.check(a.s = b.s AND a.n = b.n, 'levels default to the setting')
  FROM (SELECT sum(rows_after) s, count(*) n FROM plan_room(:'room')) a,
       (SELECT sum(rows_after) s, count(*) n
          FROM plan_room(:'room', current_setting('synapse_compress.levels'))) b;
SELECT sc_test.check(plan_room_json(:'room') ->> 'levels' = current_setting('synapse_compress.levels'),
                     'the JSON names the levels used');

-- Nothing written, and no row or table lock beyond a SELECT's.
BEGIN;
SELECT count(*) FROM plan_room(:'room', '100,50,25') \gset
SELECT count(*) FROM plan_room_json(:'room', '100,50,25') \gset
SELECT sc_test.check(count(*) = 0, 'no lock stronger than AccessShareLock')
  FROM pg_locks WHERE pid = pg_backend_pid() AND locktype IN ('relation', 'tuple')
   AND mode <> 'AccessShareLock';
COMMIT;
SELECT sc_test.check(sc_test.raw_digest() = :'raw0', 'plan_room wrote nothing');

-- The JSON tree: one node per group, the plan's rows and predecessors.
SELECT plan_room_json(:'room', '100,50,25') AS tree \gset
SELECT sc_test.check(jsonb_array_length(:'tree'::jsonb -> 'nodes') = (SELECT count(*) FROM ids)
                     AND (:'tree'::jsonb ->> 'rows_after')::bigint
                         = (SELECT sum(rows_after) FROM plan_room(:'room', '100,50,25'))
                     AND (:'tree'::jsonb ->> 'room_id') = :'room',
                     'the JSON tree has every group and the plan''s rows');
SELECT sc_test.check(count(*) = 0, 'the JSON nodes are the plan''s')
  FROM jsonb_to_recordset(:'tree'::jsonb -> 'nodes')
         AS j(id bigint, prev bigint, old_prev bigint, depth int, rows bigint, action text)
  FULL JOIN plan_room(:'room', '100,50,25') p ON p.state_group = j.id
 WHERE (j.prev, j.old_prev, j.depth, j.rows, j.action)
       IS DISTINCT FROM (p.new_prev, p.old_prev, p.depth, p.rows_after, p.action);

-- The real run removes exactly the rows the plan said.
SELECT sum(rows_after) AS planned FROM plan_room(:'room', '100,50,25') \gset
SELECT sc_test.check(written AND rows_after = :planned, 'the real run lands on the plan')
  FROM compress_room(:'room', levels => '100,50,25');
SELECT sc_test.check(count(*) = :planned, 'stored rows are the plan''s')
  FROM state_groups_state s JOIN ids ON ids.id = s.state_group;
