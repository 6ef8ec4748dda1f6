-- Helpers of the isolation specs (schema sc_iso), loaded once by pgrx-tests/pgtools.sh
-- after e2e/lib.sql and e2e/sim.sql. Each spec's setup builds the room
-- !race:example.org (sc_iso.setup_room) and its teardown empties every table it
-- touched (sc_iso.reset), so permutations start alike.
CREATE SCHEMA sc_iso;

-- Groups a spec picked in its setup, by name (sc_iso.picked(name) in the steps).
CREATE TABLE sc_iso.pick (name text PRIMARY KEY, state_group bigint NOT NULL);
CREATE FUNCTION sc_iso.picked(what text) RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT state_group FROM sc_iso.pick WHERE name = what
$$;

-- What compress_room(room, levels => lv) would do, run and rolled back (in a
-- subtransaction): one row per group whose edge it changes, with the stored and the
-- new predecessor (0: none).
CREATE FUNCTION sc_iso.plan(room text, lv text)
RETURNS TABLE (state_group bigint, old_prev bigint, new_prev bigint) LANGUAGE plpgsql AS $$
DECLARE planned jsonb;
BEGIN
  CREATE TEMP TABLE sc_iso_edges ON COMMIT DROP AS SELECT * FROM state_group_edges;
  BEGIN
    PERFORM 1 FROM compress_room(room, levels => lv);
    SELECT coalesce(jsonb_agg(jsonb_build_array(g.id, coalesce(b.prev_state_group, 0),
                                                coalesce(e.prev_state_group, 0)) ORDER BY g.id), '[]')
    INTO planned
    FROM state_groups g
    LEFT JOIN sc_iso_edges b ON b.state_group = g.id
    LEFT JOIN state_group_edges e ON e.state_group = g.id
    WHERE g.room_id = room AND b.prev_state_group IS DISTINCT FROM e.prev_state_group;
    RAISE EXCEPTION USING ERRCODE = 'SCI01';  -- undo the run, keep `planned`
  EXCEPTION WHEN SQLSTATE 'SCI01' THEN NULL;
  END;
  DROP TABLE sc_iso_edges;
  RETURN QUERY SELECT (p ->> 0)::bigint, (p ->> 1)::bigint, (p ->> 2)::bigint
               FROM jsonb_array_elements(planned) p;
END $$;

-- The spec's room: 300 groups Synapse-style (sc_test.make_room: a snapshot every 100,
-- 200 members who never change), snapshotted as the truth of sc_sim.check_round, and
-- the groups a scenario needs picked from the plan of compress_room with levels
-- '40,20' (the specs' levels: they rewrite several groups of this room, the default levels
-- only 2, which leaves no old predecessor to pick):
--   new_prev  a new predecessor compress_room does not rewrite itself
--   old_prev  the stored predecessor of a rewritten group, not rewritten itself
--   rewritten a rewritten group other than new_prev
CREATE FUNCTION sc_iso.setup_room() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM sc_test.make_room('!race:example.org', 300, 1, 100, 200);
  INSERT INTO sc_sim.rooms (room_id, role) VALUES ('!race:example.org', 'live');
  CALL sc_test.snapshot();
  CREATE TEMP TABLE sc_iso_plan ON COMMIT DROP AS SELECT * FROM sc_iso.plan('!race:example.org', '40,20');
  INSERT INTO sc_iso.pick
    SELECT 'new_prev', min(new_prev) FROM sc_iso_plan
    WHERE new_prev <> 0 AND new_prev NOT IN (SELECT state_group FROM sc_iso_plan)
    HAVING min(new_prev) IS NOT NULL;
  INSERT INTO sc_iso.pick
    SELECT 'old_prev', min(old_prev) FROM sc_iso_plan
    WHERE old_prev <> 0 AND old_prev NOT IN (SELECT state_group FROM sc_iso_plan)
    HAVING min(old_prev) IS NOT NULL;
  INSERT INTO sc_iso.pick
    SELECT 'rewritten', min(state_group) FROM sc_iso_plan
    WHERE state_group <> sc_iso.picked('new_prev')
    HAVING min(state_group) IS NOT NULL;
  IF (SELECT count(*) FROM sc_iso.pick) <> 3 THEN
    RAISE EXCEPTION 'setup: the plan of !race:example.org has no group for every role: %',
      (SELECT string_agg(name || '=' || state_group, ', ') FROM sc_iso.pick);
  END IF;
  DROP TABLE sc_iso_plan;
  RETURN (SELECT string_agg(name || ' ' || state_group, ', ' ORDER BY name) FROM sc_iso.pick);
END $$;

-- Synapse's purge history of `groups`: their events' event_to_state_groups rows go,
-- then they are marked pending deletion, marked 1 s ago (Synapse waits 10 minutes
-- after marking; the deletion here runs with delay 0, and no clock has to tick).
CREATE FUNCTION sc_iso.purge_history(groups bigint[]) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM event_to_state_groups WHERE state_group = ANY (groups);
  PERFORM sc_sim.mark_pending(groups);
  UPDATE state_groups_pending_deletion SET insertion_ts = insertion_ts - 1000
  WHERE state_group = ANY (groups);
  RETURN cardinality(groups);
END $$;

-- The outcome of a permutation, in one row: the checks of sc_sim.check_round that
-- failed (or 'all pass'), and what Synapse's side did (sc_sim.log).
CREATE FUNCTION sc_iso.outcome(OUT checks text, OUT synapse text) LANGUAGE plpgsql AS $$
BEGIN
  SELECT coalesce(string_agg(check_name || ': ' || bad || ' (e.g. ' || coalesce(example, '') || ')', '; '),
                  'all pass')
  INTO checks FROM sc_sim.check_round(0) WHERE bad > 0;
  SELECT coalesce(string_agg(op || ' ' || coalesce(n, 1), ', ' ORDER BY id), 'nothing')
  INTO synapse FROM sc_sim.log;
END $$;

-- Empty what a spec wrote (teardown).
CREATE PROCEDURE sc_iso.reset() LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM rooms;  -- (referenced by other tables of Synapse's)
  TRUNCATE state_groups, state_group_edges, state_groups_state, event_to_state_groups,
           state_groups_pending_deletion, state_groups_persisting,
           sc_iso.pick, sc_test.before, sc_sim.rooms, sc_sim.expected, sc_sim.gone, sc_sim.log,
           sc_sim.anomaly, sc_sim.compress_log, sc_sim.last_fp;
END $$;
