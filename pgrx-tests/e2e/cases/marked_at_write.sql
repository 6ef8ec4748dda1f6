-- A chosen predecessor that Synapse marks for deletion after the engine read it is
-- refused at the write: Synapse's purge history marks groups without taking a lock,
-- at any moment, and a node cached from an earlier statement, slice or chunk still
-- offers the group as a base. The mark is made at a known point here: a trigger on the
-- no-op update the write gives each chosen predecessor (under its lock), just before
-- the write checks the marks. The trigger's marks are rolled back with the refused
-- attempt, so each retry meets them again: after its last attempt compress_room fails
-- with 40001, nothing written; without the trigger the same call writes. (A mark that
-- stays, committed by another session, is met by the retry: marked_retried.)
-- data: --preset headline --scale 0.02 --seed 24
CALL sc_test.snapshot();
SELECT sc_test.raw_digest() AS raw0 \gset
SELECT room_id AS room FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1 \gset
SELECT set_config('sc_test.room', :'room', false);

CREATE FUNCTION public.sc_test_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.state_groups_pending_deletion (state_group, insertion_ts)
  VALUES (NEW.id, 0) ON CONFLICT DO NOTHING;
  RETURN NEW;
END $$;
CREATE TRIGGER sc_test_mark AFTER UPDATE ON state_groups
  FOR EACH ROW EXECUTE FUNCTION public.sc_test_mark();

DO $$
DECLARE msg text; hint text;
BEGIN
  PERFORM * FROM compress_room(current_setting('sc_test.room'));
  RAISE EXCEPTION 'compress_room wrote on predecessors marked for deletion';
EXCEPTION WHEN serialization_failure THEN
  GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
  IF msg NOT LIKE '%marked for deletion%' OR coalesce(hint, '') = '' THEN
    RAISE EXCEPTION 'unexpected refusal: % (hint: %)', msg, hint;
  END IF;
END $$;
SELECT sc_test.check(sc_test.raw_digest() = :'raw0', 'the refused write wrote nothing');
SELECT sc_test.check(count(*) = 0, 'the marks were undone with the call')
FROM state_groups_pending_deletion;

DROP TRIGGER sc_test_mark ON state_groups;
SELECT sc_test.check(written AND groups_changed > 0, 'without the marks the same call writes')
FROM compress_room(:'room');
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
