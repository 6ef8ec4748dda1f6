-- A mark that Synapse commits while we write is met by a retry, not an error: the
-- write refuses the marked predecessor (40001, nothing written), the attempt is rolled
-- back and planned again at READ COMMITTED, where the mark is seen and the group is
-- not chosen. Made deterministic with a second session (dblink), as Synapse's purge is
-- one: a statement trigger on the no-op update the write gives the chosen predecessors
-- marks them all there and commits, the first time only (a sequence, which the
-- rollback does not undo). Both paths: compress_room (its own retry) on one room, then
-- a scheduled run (`spi::guard::contained`) on the other. Each must write, never on a
-- marked group, nothing recorded as failed, every group's state kept. (Without the
-- retry compress_room fails with 40001 and the scheduled chunk is recorded as failed;
-- marked_at_write covers a mark that comes back at every attempt.)
-- data: --preset headline --scale 0.02 --seed 24
-- data: --preset headline --scale 0.02 --seed 25 --first-id 700000
CALL sc_test.snapshot();
CREATE TABLE sc_test.edges0 AS SELECT * FROM state_group_edges;
SELECT NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'dblink') AS no_dblink \gset
\if :no_dblink
\echo SKIPPED: dblink is not installed on this server
\quit
\endif
SELECT min(room_id) AS room, max(room_id) AS room2 FROM state_groups \gset
SELECT sc_test.check(:'room' <> :'room2', 'two rooms');
SELECT sc_test.connect('synapse');

CREATE SEQUENCE public.sc_test_fired;
-- compress_room writes as the tables' owner with a pinned search_path: qualified names.
CREATE FUNCTION public.sc_test_mark_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('public.sc_test_fired') = 1 THEN
    PERFORM public.dblink_exec('synapse', format(
      'INSERT INTO public.state_groups_pending_deletion (state_group, insertion_ts) '
      'SELECT unnest(%L::bigint[]), 0 ON CONFLICT DO NOTHING',
      (SELECT array_agg(id) FROM chosen)));
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER sc_test_mark_once AFTER UPDATE ON state_groups
  REFERENCING NEW TABLE AS chosen
  FOR EACH STATEMENT EXECUTE FUNCTION public.sc_test_mark_once();

SELECT sc_test.check(written AND groups_changed > 0, 'compress_room wrote after the retry')
FROM compress_room(:'room');
SELECT count(*) AS marked FROM state_groups_pending_deletion \gset
SELECT sc_test.check(:marked > 0,
                     format('the other session''s mark stayed (%s groups): the first attempt met it', :marked));
SELECT sc_test.check(nextval('public.sc_test_fired') > 2, 'the write ran again after the refusal');

-- The scheduled path on the other room, the trigger armed again.
ALTER SEQUENCE public.sc_test_fired RESTART;
SET synapse_compress.chunk_pause = 0;
CALL compress_database();
SELECT sc_test.check(count(*) > 0, 'the second room''s first write met marks too')
FROM state_groups_pending_deletion p JOIN state_groups g ON g.id = p.state_group
WHERE g.room_id = :'room2';
SELECT sc_test.check(count(*) = 1 AND bool_and(error_count = 0 AND last_error IS NULL),
                     format('the marked chunk was retried, not recorded as failed (%s)', max(last_error)))
FROM synapse_compress.room_queue WHERE room_id = :'room2';
SELECT sc_test.check(outcome = 'done' AND groups_changed > 0 AND errors = 0,
                     format('the run wrote the second room (%s, %s groups changed)', outcome, groups_changed))
FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;

SELECT sc_test.check(count(*) = 0,
                     format('no new edge points at a marked group (e.g. %s)', min(e.state_group)))
FROM state_group_edges e
JOIN state_groups_pending_deletion p ON p.state_group = e.prev_state_group
WHERE NOT EXISTS (SELECT 1 FROM sc_test.edges0 o
                  WHERE o.state_group = e.state_group AND o.prev_state_group = e.prev_state_group);
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
SELECT dblink_disconnect('synapse');
