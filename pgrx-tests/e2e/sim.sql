-- Synapse 1.163.2's own transactions on the state tables, in PL/pgSQL (schema sc_sim),
-- for the concurrency stress test (pgrx-tests/stress/run.sh). Load after lib.sql:
-- sc_test.before (the last snapshot) is the truth for groups that existed then.
--
-- Each Synapse function is mirrored statement by statement, with its locks, in one
-- SQL function per Synapse transaction (`runInteraction`). Synapse runs them at
-- REPEATABLE READ and retries 40001/40P01 up to 5 attempts: so do the procedures
-- here (sc_sim.txn), when the session's default_transaction_isolation is
-- 'repeatable read' (run.sh sets it). Locks taken by Synapse:
--   creating a group        state_groups row of the predecessor FOR KEY SHARE, and an
--                           UPDATE of its state_groups_pending_deletion row (the bump)
--   persisting an event     its groups FOR KEY SHARE, then state_groups_persisting rows
--   purge history           none (INSERT ... ON CONFLICT DO NOTHING into pending)
--   deleting pending groups the doomed state_groups rows FOR UPDATE; the surviving
--                           children it de-deltas are NOT locked, only rewritten
--   purge room              plain DELETEs (the room's state_groups rows last)
--
-- Additions of the test, which Synapse does not do (they read, never lock):
--   * every new group's intended state (its predecessor's state as read in the
--     creating transaction, plus the delta) is recorded in sc_sim.expected;
--   * whenever a simulated Synapse transaction reads a group's state (predecessor of a
--     new group, a child being de-deltaed, the readers) it is compared with the truth
--     and any difference is recorded in sc_sim.anomaly: Synapse would have used or
--     cached wrong state;
--   * sc_sim.log counts each committed operation, sc_sim.gone lists deleted groups.
-- Recursive walks carry a hop guard that Synapse's do not (identical on sound data;
-- on a cycle they stop instead of running forever).
CREATE SCHEMA sc_sim;

-- ---------------------------------------------------------------------------------
-- Bookkeeping of the test
-- ---------------------------------------------------------------------------------

-- The round being run (session setting sc_sim.round), stamped on every record.
CREATE FUNCTION sc_sim.round() RETURNS int LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('sc_sim.round', true), '')::int, 0)
$$;

-- Synapse's clock.time_msec().
CREATE FUNCTION sc_sim.now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS $$
  SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
$$;

-- 'live' rooms get new groups and history purges; 'victim' rooms get purged whole.
CREATE TABLE sc_sim.rooms (
  room_id text PRIMARY KEY,
  role text NOT NULL CHECK (role IN ('live', 'victim')),
  hot boolean NOT NULL DEFAULT false,   -- gets a good share of the new groups
  purged_at timestamptz
);

-- What each group created by the simulation must resolve to.
CREATE TABLE sc_sim.expected (
  state_group bigint PRIMARY KEY,
  room_id text NOT NULL,
  prev bigint,
  how text NOT NULL,            -- 'delta' or 'full' (chain of the predecessor >= 100)
  n bigint NOT NULL,
  digest text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  round int NOT NULL DEFAULT sc_sim.round()
);

-- Groups deleted by simulated Synapse transactions (and how).
CREATE TABLE sc_sim.gone (
  state_group bigint PRIMARY KEY,
  how text NOT NULL,            -- 'deleted' (pending deletion) or 'purged' (room purge)
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  round int NOT NULL DEFAULT sc_sim.round()
);

-- One row per committed operation (or per error / retry, logged after the rollback).
CREATE TABLE sc_sim.log (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  round int NOT NULL DEFAULT sc_sim.round(),
  op text NOT NULL,
  n bigint NOT NULL DEFAULT 1,
  detail text
);

-- Wrong state seen by a simulated Synapse read (each one is a failure of the test).
CREATE TABLE sc_sim.anomaly (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  round int NOT NULL DEFAULT sc_sim.round(),
  who text NOT NULL,
  state_group bigint NOT NULL,
  detail text
);

-- Every compress_room call made by the test and how it ended.
CREATE TABLE sc_sim.compress_log (
  id bigserial PRIMARY KEY,
  round int NOT NULL DEFAULT sc_sim.round(),
  tag text NOT NULL,
  room_id text NOT NULL,
  levels text NOT NULL,
  started_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL,
  sqlstate text,                -- NULL: it returned
  message text,
  groups_changed bigint,
  groups_skipped bigint,
  written boolean
);

-- ---------------------------------------------------------------------------------
-- Reading state as Synapse does
-- ---------------------------------------------------------------------------------

-- StateGroupBackgroundUpdateStore._get_state_groups_from_groups_txn (PostgreSQL, no
-- filter): walk the edges, then per (type, state_key) the highest group wins.
-- event_id only breaks ties inside one group (ambiguous data), for determinism.
CREATE FUNCTION sc_sim.resolve(sg bigint)
RETURNS TABLE (type text, state_key text, event_id text) LANGUAGE sql STABLE AS $$
  SELECT * FROM sc_test.resolve(sg)
$$;

-- A state's fingerprint, in sc_test.fingerprints()'s format.
CREATE FUNCTION sc_sim.digest(types text[], keys text[], events text[])
RETURNS TABLE (n bigint, digest text) LANGUAGE sql IMMUTABLE AS $$
  SELECT count(*), md5(string_agg(t || E'\x1f' || k || E'\x1f' || e, E'\x1e' ORDER BY t, k))
  FROM unnest(types, keys, events) AS u(t, k, e)
$$;

CREATE FUNCTION sc_sim.state_digest(sg bigint) RETURNS TABLE (n bigint, digest text)
LANGUAGE sql STABLE AS $$
  SELECT count(*), md5(string_agg(type || E'\x1f' || state_key || E'\x1f' || event_id, E'\x1e'
                                  ORDER BY type, state_key))
  FROM sc_sim.resolve(sg)
$$;

-- What a group must resolve to: recorded at creation, else the last snapshot.
CREATE FUNCTION sc_sim.truth(sg bigint) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce((SELECT digest FROM sc_sim.expected WHERE state_group = sg),
                  (SELECT digest FROM sc_test.before WHERE state_group = sg))
$$;

-- Compare a group's state, as read now, with its truth; record a difference.
CREATE FUNCTION sc_sim.check_state(sg bigint, who text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE want text := sc_sim.truth(sg); got text; got_n bigint;
BEGIN
  IF want IS NULL THEN RETURN true; END IF;
  SELECT d.n, d.digest INTO got_n, got FROM sc_sim.state_digest(sg) d;
  IF got IS DISTINCT FROM want THEN
    INSERT INTO sc_sim.anomaly (who, state_group, detail)
    VALUES (who, sg, format('read %s keys, digest %s; expected %s', got_n, got, want));
    RETURN false;
  END IF;
  RETURN true;
END $$;

-- The predecessor's state (as read now) with a delta applied: a new group's state.
CREATE FUNCTION sc_sim.apply_delta(prev bigint, d_types text[], d_keys text[], d_events text[])
RETURNS TABLE (type text, state_key text, event_id text) LANGUAGE sql STABLE AS $$
  SELECT DISTINCT ON (x.type, x.state_key) x.type, x.state_key, x.event_id FROM (
      SELECT u.t, u.k, u.e, 0 FROM unnest(d_types, d_keys, d_events) AS u(t, k, e)
    UNION ALL
      SELECT r.type, r.state_key, r.event_id, 1 FROM sc_sim.resolve(prev) r
  ) AS x(type, state_key, event_id, pri)
  ORDER BY x.type, x.state_key, x.pri
$$;

-- Record a new group's intended state (and check the predecessor it was built on).
CREATE FUNCTION sc_sim.record_expected(sg bigint, room text, prev bigint, how text,
                                       d_types text[], d_keys text[], d_events text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM sc_sim.check_state(prev, 'new group ' || sg || ' read its predecessor');
  INSERT INTO sc_sim.expected (state_group, room_id, prev, how, n, digest)
  SELECT sg, room, prev, how, d.n, d.digest
  FROM (SELECT array_agg(type) AS t, array_agg(state_key) AS k, array_agg(event_id) AS e
        FROM sc_sim.apply_delta(prev, d_types, d_keys, d_events)) a,
       sc_sim.digest(a.t, a.k, a.e) d;
END $$;

-- ---------------------------------------------------------------------------------
-- Creating state groups
-- ---------------------------------------------------------------------------------

-- The state change of a new event (Synapse computes it in memory before storing the
-- group): 1..changes keys, each either an existing key of `prev` with a new event or
-- a new member / custom state key. Read only.
CREATE FUNCTION sc_sim.random_delta(prev bigint, changes int)
RETURNS TABLE (type text, state_key text, event_id text) LANGUAGE plpgsql AS $$
DECLARE t text; k text; ts text[] := '{}'; ks text[] := '{}'; es text[] := '{}';
BEGIN
  FOR i IN 1..greatest(changes, 1) LOOP
    t := NULL;
    IF random() < 0.5 THEN
      SELECT r.type, r.state_key INTO t, k FROM sc_sim.resolve(prev) r ORDER BY random() LIMIT 1;
    END IF;
    IF t IS NULL THEN
      IF random() < 0.8 THEN
        t := 'm.room.member'; k := '@sim' || floor(random() * 1e9)::bigint || ':example.org';
      ELSE
        t := 'org.example.sim'; k := md5(random()::text);
      END IF;
    END IF;
    ts := ts || t; ks := ks || k; es := es || ('$sim' || md5(random()::text || clock_timestamp()));
  END LOOP;
  -- one event per key: the last change of a key wins
  RETURN QUERY SELECT DISTINCT ON (u.t, u.k) u.t, u.k, u.e
    FROM unnest(ts, ks, es) WITH ORDINALITY AS u(t, k, e, i) ORDER BY u.t, u.k, u.i DESC;
END $$;

-- StateGroupDataStore.store_state_group -> insert_delta_group_txn (one transaction).
-- Returns the new group, or NULL when the predecessor's chain is too long
-- (MAX_STATE_DELTA_HOPS = 100): Synapse then commits (the bump) and stores the state
-- in full in other transactions (sc_sim.store_full_group).
CREATE FUNCTION sc_sim.store_delta_group(room text, prev bigint,
                                         d_types text[], d_keys text[], d_events text[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE hops bigint; sg bigint;
BEGIN
  -- StateDeletionDataStore._check_state_groups_and_bump_deletion_txn(txn, {prev}):
  -- _get_existing_groups_with_lock (FOR KEY SHARE), then _bump_deletion_txn.
  PERFORM id FROM state_groups WHERE id IN (prev) FOR KEY SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'Trying to persist state with unpersisted prev_group: %', prev
      USING ERRCODE = 'SCP01';
  END IF;
  UPDATE state_groups_pending_deletion
  SET sequence_number = DEFAULT, insertion_ts = sc_sim.now_ms()
  WHERE state_group IN (prev);

  -- _count_state_group_hops_txn: the chain's length in groups, prev included.
  WITH RECURSIVE state(state_group, hops) AS (
      VALUES (prev, 0)
    UNION ALL
      SELECT e.prev_state_group, s.hops + 1 FROM state_group_edges e, state s
      WHERE s.state_group = e.state_group AND s.hops < 10000
  ) SELECT count(*) INTO hops FROM state;
  IF hops >= 10000 THEN
    RAISE EXCEPTION 'state group % has a cycle or a chain of 10000 hops', prev USING ERRCODE = 'SCX01';
  END IF;
  IF hops >= 100 THEN
    RETURN NULL;
  END IF;

  sg := nextval('state_group_id_seq');
  INSERT INTO state_groups (id, room_id, event_id) VALUES (sg, room, d_events[cardinality(d_events)]);
  INSERT INTO state_group_edges (state_group, prev_state_group) VALUES (sg, prev);
  INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT sg, room, u.t, u.k, u.e FROM unnest(d_types, d_keys, d_events) AS u(t, k, e);

  PERFORM sc_sim.record_expected(sg, room, prev, 'delta', d_types, d_keys, d_events);
  INSERT INTO sc_sim.log (op, detail) VALUES ('new_delta', sg::text);
  RETURN sg;
END $$;

-- store_state_group's fallback: current_state_ids = _get_state_for_groups([prev])
-- updated with the delta (a read, no lock), then insert_full_state_txn. (Synapse reads
-- and inserts in two transactions, the read often from its cache; one here.)
CREATE FUNCTION sc_sim.store_full_group(room text, prev bigint,
                                        d_types text[], d_keys text[], d_events text[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE sg bigint;
BEGIN
  sg := nextval('state_group_id_seq');
  INSERT INTO state_groups (id, room_id, event_id) VALUES (sg, room, d_events[cardinality(d_events)]);
  INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT sg, room, a.type, a.state_key, a.event_id
  FROM sc_sim.apply_delta(prev, d_types, d_keys, d_events) a;

  PERFORM sc_sim.record_expected(sg, room, prev, 'full', d_types, d_keys, d_events);
  INSERT INTO sc_sim.log (op, detail) VALUES ('new_full', sg::text);
  RETURN sg;
END $$;

-- A new group on `prev` with `changes` random changes, in one transaction (for use by
-- hand; the writers use the functions above in Synapse's separate transactions).
CREATE FUNCTION sc_sim.new_group(room text, prev bigint, changes int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE t text[]; k text[]; e text[]; sg bigint;
BEGIN
  SELECT array_agg(d.type), array_agg(d.state_key), array_agg(d.event_id) INTO t, k, e
  FROM sc_sim.random_delta(prev, changes) d;
  sg := sc_sim.store_delta_group(room, prev, t, k, e);
  RETURN coalesce(sg, sc_sim.store_full_group(room, prev, t, k, e));
END $$;

-- `n` new groups in a row on the room's newest group (setup: Synapse-shaped history,
-- a full snapshot whenever the chain reaches 100).
CREATE FUNCTION sc_sim.grow(room text, n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE sg bigint;
BEGIN
  FOR i IN 1..n LOOP
    SELECT max(id) INTO sg FROM state_groups WHERE room_id = room;
    sg := sc_sim.new_group(room, sg, 1 + floor(random() * 2)::int);
    PERFORM sc_sim.persist_event((SELECT event_id FROM state_groups WHERE id = sg), sg);
  END LOOP;
  RETURN sg;
END $$;

-- StateDeletionDataStore._mark_state_groups_as_persisting_txn: before persisting an
-- event, its groups (state after and before the event) are locked FOR KEY SHARE,
-- checked to exist, and upserted into state_groups_persisting.
CREATE FUNCTION sc_sim.mark_persisting(groups bigint[], instance text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE have bigint[];
BEGIN
  SELECT coalesce(array_agg(id), '{}') INTO have
  FROM (SELECT id FROM state_groups WHERE id = ANY (groups) FOR KEY SHARE) s;
  IF EXISTS (SELECT unnest(groups) EXCEPT SELECT unnest(have)) THEN
    RAISE EXCEPTION 'state groups have been deleted: %',
      ARRAY(SELECT unnest(groups) EXCEPT SELECT unnest(have)) USING ERRCODE = 'SCP02';
  END IF;
  INSERT INTO state_groups_persisting (state_group, instance_name, inserted_ts)
  SELECT g, instance, sc_sim.now_ms() FROM unnest(groups) g
  ON CONFLICT (state_group, instance_name) DO UPDATE SET inserted_ts = EXCLUDED.inserted_ts;
  RETURN cardinality(groups);
END $$;

-- The main store's part of persisting the event: its event_to_state_groups row (what
-- makes the group "referenced").
CREATE FUNCTION sc_sim.persist_event(event text, sg bigint) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO event_to_state_groups (event_id, state_group) VALUES (event, sg);
  INSERT INTO sc_sim.log (op, detail) VALUES ('persisted', sg::text);
  RETURN 1;
END $$;

-- StateDeletionDataStore._finish_persisting_txn.
CREATE FUNCTION sc_sim.finish_persisting(groups bigint[], instance text, error boolean)
RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM state_groups_persisting WHERE state_group = ANY (groups) AND instance_name = instance;
  IF error THEN
    -- _bump_deletion_txn
    UPDATE state_groups_pending_deletion
    SET sequence_number = DEFAULT, insertion_ts = sc_sim.now_ms()
    WHERE state_group = ANY (groups);
    RETURN 0;
  END IF;
  DELETE FROM state_groups_pending_deletion WHERE state_group = ANY (groups);
  RETURN 1;
END $$;

-- ---------------------------------------------------------------------------------
-- Purge history: mark unreferenced groups pending deletion
-- ---------------------------------------------------------------------------------

-- StateDeletionDataStore._mark_state_groups_as_pending_deletion_txn.
CREATE FUNCTION sc_sim.mark_pending(groups bigint[]) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO state_groups_pending_deletion (state_group, insertion_ts)
  SELECT g, sc_sim.now_ms() FROM unnest(groups) g
  ON CONFLICT (state_group) DO NOTHING;
  INSERT INTO sc_sim.log (op, n) VALUES ('marked_pending', cardinality(groups));
  RETURN cardinality(groups);
END $$;

-- PurgeEventsStorageController._find_unreferenced_groups: from the groups the purged
-- events referenced, walk predecessors and children that no event references.
CREATE FUNCTION sc_sim.find_unreferenced_groups(start bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE seen bigint[] := start; todo bigint[] := start; cur bigint[];
        referenced bigint[] := '{}'; ref bigint[]; prevs bigint[]; nexts bigint[];
BEGIN
  WHILE cardinality(todo) > 0 LOOP
    cur := todo; todo := '{}';
    -- get_referenced_state_groups (main store)
    SELECT coalesce(array_agg(DISTINCT state_group), '{}') INTO ref
    FROM event_to_state_groups WHERE state_group = ANY (cur);
    referenced := referenced || ref;
    cur := ARRAY(SELECT unnest(cur) EXCEPT SELECT unnest(ref));
    -- get_previous_state_groups
    prevs := ARRAY(SELECT prev_state_group FROM state_group_edges WHERE state_group = ANY (cur)
                   EXCEPT SELECT unnest(seen));
    todo := todo || prevs; seen := seen || prevs;
    -- get_next_state_groups
    nexts := ARRAY(SELECT state_group FROM state_group_edges WHERE prev_state_group = ANY (cur)
                   EXCEPT SELECT unnest(seen));
    todo := ARRAY(SELECT DISTINCT unnest(todo || nexts)); seen := seen || nexts;
  END LOOP;
  RETURN ARRAY(SELECT unnest(seen) EXCEPT SELECT unnest(referenced));
END $$;

-- PurgeEventsStorageController.purge_history: the main store's _purge_history_txn
-- deletes the purged events' event_to_state_groups rows (here: the events of `n`
-- referenced groups of the room, the oldest, or from a random point when `oldest` is
-- false), then the unreferenced groups are found and marked pending deletion.
-- (Synapse: several transactions, no locks; one here.) Returns how many were marked.
CREATE FUNCTION sc_sim.purge_history(room text, n int, oldest boolean DEFAULT true) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE start bigint[]; doomed bigint[]; total bigint;
BEGIN
  SELECT count(*) INTO total FROM state_groups WHERE room_id = room;
  WITH purged AS (
    DELETE FROM event_to_state_groups
    WHERE state_group IN (
      SELECT g.id FROM state_groups g
      WHERE g.room_id = room AND EXISTS (SELECT 1 FROM event_to_state_groups r WHERE r.state_group = g.id)
        -- history is purged up to a point: the newest events (the room's forward
        -- extremities) stay
        AND g.id < (SELECT max(id) FROM state_groups WHERE room_id = room)
      ORDER BY g.id
      OFFSET CASE WHEN oldest THEN 0 ELSE floor(random() * total / 2)::int END
      LIMIT n)
    RETURNING state_group)
  SELECT coalesce(array_agg(DISTINCT state_group), '{}') INTO start FROM purged;
  IF cardinality(start) = 0 THEN RETURN 0; END IF;
  doomed := sc_sim.find_unreferenced_groups(start);
  PERFORM sc_sim.mark_pending(doomed);
  RETURN cardinality(doomed);
END $$;

-- ---------------------------------------------------------------------------------
-- Deleting groups pending deletion (PurgeEventsStorageController._delete_state_groups_loop)
-- ---------------------------------------------------------------------------------

-- StateDeletionDataStore._get_next_state_group_collection_to_delete_txn, with
-- DELAY_BEFORE_DELETION_MS (10 minutes in Synapse) as a parameter.
CREATE FUNCTION sc_sim.next_to_delete(delay_ms bigint,
                                      OUT room text, OUT groups bigint[], OUT seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE ts bigint;
BEGIN
  SELECT sg.room_id, sd.insertion_ts INTO room, ts
  FROM state_groups_pending_deletion AS sd
  INNER JOIN state_groups AS sg ON (id = sd.state_group)
  LEFT JOIN state_groups_persisting AS sp USING (state_group)
  WHERE insertion_ts < sc_sim.now_ms() - delay_ms AND sp.state_group IS NULL
  ORDER BY insertion_ts
  LIMIT 1;
  IF room IS NULL THEN RETURN; END IF;
  SELECT array_agg(sd.state_group ORDER BY sd.state_group), array_agg(sd.sequence_number ORDER BY sd.state_group)
  INTO groups, seqs
  FROM state_groups_pending_deletion AS sd
  INNER JOIN state_groups AS sg ON (id = sd.state_group)
  LEFT JOIN state_groups_persisting AS sp USING (state_group)
  WHERE sg.room_id = room AND insertion_ts = ts AND sp.state_group IS NULL;
END $$;

-- PurgeEventsStorageController._delete_state_groups, first part: groups that became
-- referenced are marked as used (mark_state_groups_as_used: a DELETE of their pending
-- rows). Returns the rest (and how many were referenced).
CREATE FUNCTION sc_sim.unmark_referenced(groups bigint[], seqs bigint[],
                                         OUT rest bigint[], OUT rest_seqs bigint[], OUT referenced int)
LANGUAGE plpgsql AS $$
DECLARE ref bigint[];
BEGIN
  SELECT coalesce(array_agg(DISTINCT state_group), '{}') INTO ref
  FROM event_to_state_groups WHERE state_group = ANY (groups);
  IF cardinality(ref) > 0 THEN
    DELETE FROM state_groups_pending_deletion WHERE state_group = ANY (ref);
  END IF;
  SELECT coalesce(array_agg(g ORDER BY g), '{}'), coalesce(array_agg(s ORDER BY g), '{}')
  INTO rest, rest_seqs FROM unnest(groups, seqs) AS u(g, s) WHERE NOT g = ANY (ref);
  referenced := cardinality(ref);
END $$;

-- StateGroupDataStore._purge_unreferenced_state_groups, including
-- StateDeletionDataStore.get_state_groups_ready_for_potential_deletion_txn: lock the
-- doomed groups FOR UPDATE, re-check them (still pending with the same sequence
-- number, old enough, not being persisted; if any is not ready, none of the map's
-- ancestors may go), de-delta every surviving child into a full snapshot, delete.
-- Returns how many groups were deleted (0: Synapse's "no progress").
CREATE FUNCTION sc_sim.purge_unreferenced(room text, groups bigint[], seqs bigint[], delay_ms bigint)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
  now_ms bigint := sc_sim.now_ms();
  ready bigint[]; not_ready bigint[]; doomed bigint[]; remaining bigint[];
  sg bigint; t text[]; k text[]; e text[];
BEGIN
  IF cardinality(groups) = 0 THEN RETURN 0; END IF;
  PERFORM id FROM state_groups WHERE id = ANY (groups) FOR UPDATE;

  WITH m AS (SELECT * FROM unnest(groups, seqs) AS m(state_group, seq)),
  s AS (
    SELECT state_group, insertion_ts, sequence_number FROM (
        SELECT state_group, insertion_ts, sequence_number FROM state_groups_pending_deletion
      UNION
        SELECT state_group, null, null FROM state_groups_persisting
    ) AS s WHERE state_group = ANY (groups)
  ), judged AS (
    SELECT s.state_group,
           s.insertion_ts IS NULL OR s.sequence_number <> m.seq OR now_ms - s.insertion_ts < delay_ms AS not_ok
    FROM s JOIN m USING (state_group)
  )
  SELECT coalesce(array_agg(DISTINCT state_group) FILTER (WHERE NOT not_ok), '{}'),
         coalesce(array_agg(DISTINCT state_group) FILTER (WHERE not_ok), '{}')
  INTO ready, not_ready FROM judged;

  doomed := ARRAY(SELECT unnest(ready) EXCEPT SELECT unnest(not_ready));
  IF cardinality(not_ready) > 0 THEN
    doomed := ARRAY(
      SELECT unnest(doomed)
      EXCEPT
      SELECT state_group FROM (
        WITH RECURSIVE ancestors(state_group, hops) AS (
            SELECT DISTINCT prev_state_group, 0 FROM state_group_edges WHERE state_group = ANY (groups)
          UNION
            SELECT e.prev_state_group, a.hops + 1
            FROM state_group_edges e INNER JOIN ancestors a USING (state_group)
            WHERE a.hops < 10000
        ) SELECT state_group FROM ancestors) anc);
  END IF;
  IF cardinality(doomed) = 0 THEN RETURN 0; END IF;

  remaining := ARRAY(SELECT state_group FROM state_group_edges WHERE prev_state_group = ANY (doomed)
                     EXCEPT SELECT unnest(doomed));
  FOREACH sg IN ARRAY remaining LOOP
    -- [purge] de-delta-ing remaining state group sg
    PERFORM sc_sim.check_state(sg, 'de-delta of ' || sg || ' read it');
    SELECT array_agg(r.type), array_agg(r.state_key), array_agg(r.event_id) INTO t, k, e
    FROM sc_sim.resolve(sg) r;
    DELETE FROM state_groups_state WHERE state_group = sg;
    DELETE FROM state_group_edges WHERE state_group = sg;
    INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
    SELECT sg, room, u.t, u.k, u.e FROM unnest(t, k, e) AS u(t, k, e);
  END LOOP;

  -- [purge] removing redundant state groups (execute_batch: one statement per group)
  FOREACH sg IN ARRAY doomed LOOP
    DELETE FROM state_groups_state WHERE state_group = sg;
  END LOOP;
  FOREACH sg IN ARRAY doomed LOOP
    DELETE FROM state_group_edges WHERE state_group = sg;
  END LOOP;
  FOREACH sg IN ARRAY doomed LOOP
    DELETE FROM state_groups WHERE id = sg;
  END LOOP;
  FOREACH sg IN ARRAY doomed LOOP
    DELETE FROM state_groups_pending_deletion WHERE state_group = sg;
  END LOOP;

  INSERT INTO sc_sim.gone (state_group, how) SELECT unnest(doomed), 'deleted';
  INSERT INTO sc_sim.log (op, n) VALUES ('deleted', cardinality(doomed)), ('dedelta', cardinality(remaining));
  RETURN cardinality(doomed);
END $$;

-- The whole deletion loop in one transaction (for use by hand; the writers run its
-- three steps in separate transactions, as Synapse does). Returns groups deleted.
CREATE FUNCTION sc_sim.delete_pending(older_than interval) RETURNS int LANGUAGE plpgsql AS $$
DECLARE delay bigint := (extract(epoch FROM older_than) * 1000)::bigint;
        nxt record; u record; done int; total int := 0;
BEGIN
  LOOP
    SELECT * INTO nxt FROM sc_sim.next_to_delete(delay);
    EXIT WHEN nxt.room IS NULL;
    SELECT * INTO u FROM sc_sim.unmark_referenced(nxt.groups, nxt.seqs);
    done := sc_sim.purge_unreferenced(nxt.room, u.rest, u.rest_seqs, delay);
    total := total + done;
    EXIT WHEN done = 0 AND u.referenced = 0;
  END LOOP;
  RETURN total;
END $$;

-- ---------------------------------------------------------------------------------
-- Purge room (PurgeEventsStorageController.purge_room)
-- ---------------------------------------------------------------------------------

-- PurgeEventsStore._purge_room_txn, the part that matters here: the room's
-- event_to_state_groups rows and its `rooms` row go.
CREATE FUNCTION sc_sim.purge_room_main(room text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM event_to_state_groups WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = room);
  DELETE FROM rooms WHERE room_id = room;
  RETURN 1;
END $$;

-- StateGroupDataStore._purge_room_state_txn.
CREATE FUNCTION sc_sim.purge_room_state(room text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE n int;
BEGIN
  SET LOCAL statement_timeout = 0;
  DELETE FROM state_group_edges AS sge WHERE sge.state_group IN (
    SELECT id FROM state_groups AS sg WHERE sg.room_id = room);
  DELETE FROM state_groups_state AS sgs WHERE sgs.state_group IN (
    SELECT id FROM state_groups AS sg WHERE sg.room_id = room);
  WITH d AS (DELETE FROM state_groups WHERE room_id = room RETURNING id)
  INSERT INTO sc_sim.gone (state_group, how) SELECT id, 'purged' FROM d ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS n = ROW_COUNT;
  UPDATE sc_sim.rooms SET purged_at = clock_timestamp() WHERE room_id = room;
  INSERT INTO sc_sim.log (op, n, detail) VALUES ('room_purged', 1, room), ('groups_purged', n, room);
  RETURN n;
END $$;

CREATE FUNCTION sc_sim.purge_room(room text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM sc_sim.purge_room_main(room);
  RETURN sc_sim.purge_room_state(room);
END $$;

-- ---------------------------------------------------------------------------------
-- Reads, as Synapse's readers do (a group's full state), checked against the truth
-- ---------------------------------------------------------------------------------
CREATE FUNCTION sc_sim.read_check(n int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE sg bigint; bad int := 0;
BEGIN
  FOR sg IN SELECT id FROM state_groups ORDER BY random() LIMIT n LOOP
    IF NOT sc_sim.check_state(sg, 'reader') THEN bad := bad + 1; END IF;
  END LOOP;
  INSERT INTO sc_sim.log (op, n) VALUES ('read', n);
  RETURN bad;
END $$;

-- ---------------------------------------------------------------------------------
-- Driving: one Synapse transaction with runInteraction's retries; the writer loops
-- ---------------------------------------------------------------------------------

-- Run `sql` (a SELECT of one jsonb) as one transaction and COMMIT; on 40001/40P01
-- roll back and retry, 5 attempts in all (DatabasePool.new_transaction). On any
-- other error (or the last retry) roll back and return it in `err` ('SQLSTATE: msg').
CREATE PROCEDURE sc_sim.txn(sql text, INOUT res jsonb, INOUT err text)
LANGUAGE plpgsql AS $$
DECLARE st text; msg text; attempt int := 0;
BEGIN
  LOOP
    attempt := attempt + 1;
    st := NULL;
    BEGIN
      EXECUTE sql INTO res;
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    END;
    IF st IS NULL THEN
      COMMIT;
      err := NULL;
      RETURN;
    END IF;
    ROLLBACK;
    res := NULL;
    IF st IN ('40001', '40P01') THEN
      INSERT INTO sc_sim.log (op, detail) VALUES ('retry_' || st, left(sql, 60));
      COMMIT;
      IF attempt < 5 THEN
        PERFORM pg_sleep(random() * 0.05);
        CONTINUE;
      END IF;
    END IF;
    err := st || ': ' || msg;
    RETURN;
  END LOOP;
END $$;

-- Log a failed Synapse operation: refusals Synapse itself raises when a group was
-- deleted under it are expected; giving up after 5 retries is counted; anything else
-- is a writer error (a failure of the test).
CREATE PROCEDURE sc_sim.note_error(what text, err text) LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO sc_sim.log (op, detail) VALUES (
    CASE WHEN err LIKE 'SCP0%' THEN 'refused_' || what
         WHEN err LIKE '40001%' OR err LIKE '40P01%' THEN 'gave_up_' || what
         ELSE 'writer_error' END,
    what || ': ' || err);
  COMMIT;
END $$;

-- A new event with state in a live room: pick the room and predecessor (80% the
-- newest group, else any: a fork), compute the change, store the group (delta, else
-- full), then persist the event around state_groups_persisting.
CREATE PROCEDURE sc_sim.step_create(instance text) LANGUAGE plpgsql AS $$
DECLARE room text; prev bigint; t text[]; k text[]; e text[]; res jsonb; err text; sg bigint;
BEGIN
  SELECT room_id INTO room FROM sc_sim.rooms WHERE role = 'live' AND purged_at IS NULL
  ORDER BY hot AND random() < 0.3 DESC, random() LIMIT 1;
  IF random() < 0.8 THEN
    SELECT max(id) INTO prev FROM state_groups WHERE room_id = room;
  ELSE
    SELECT id INTO prev FROM state_groups WHERE room_id = room ORDER BY random() LIMIT 1;
  END IF;
  IF prev IS NULL THEN COMMIT; RETURN; END IF;
  SELECT array_agg(d.type), array_agg(d.state_key), array_agg(d.event_id) INTO t, k, e
  FROM sc_sim.random_delta(prev, 1 + floor(random() * 3)::int) d;
  COMMIT;

  CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.store_delta_group(%L, %s, %L, %L, %L))',
                         room, prev, t, k, e), res, err);
  IF err IS NOT NULL THEN CALL sc_sim.note_error('new_group', err); RETURN; END IF;
  sg := (res #>> '{}')::bigint;
  IF sg IS NULL THEN
    CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.store_full_group(%L, %s, %L, %L, %L))',
                           room, prev, t, k, e), res, err);
    IF err IS NOT NULL THEN CALL sc_sim.note_error('new_group', err); RETURN; END IF;
    sg := (res #>> '{}')::bigint;
  END IF;

  -- EventsPersistenceStorageController: persisting_state_group_references
  CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.mark_persisting(%L, %L))', ARRAY[sg, prev], instance), res, err);
  IF err IS NOT NULL THEN CALL sc_sim.note_error('persist', err); RETURN; END IF;
  CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.persist_event(%L, %s))', e[cardinality(e)], sg), res, err);
  IF err IS NOT NULL THEN CALL sc_sim.note_error('persist', err); END IF;
  PERFORM pg_sleep(random() * 0.02);
  COMMIT;
  CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.finish_persisting(%L, %L, %L))',
                         ARRAY[sg, prev], instance, err IS NOT NULL), res, err);
  IF err IS NOT NULL THEN CALL sc_sim.note_error('persist', err); END IF;
END $$;

-- One run of the deletion loop (_delete_state_groups_loop), each step its own
-- transaction as in Synapse.
CREATE PROCEDURE sc_sim.step_delete(delay_ms bigint) LANGUAGE plpgsql AS $$
DECLARE res jsonb; err text; room text; g bigint[]; s bigint[]; referenced int; done int;
BEGIN
  LOOP
    CALL sc_sim.txn(format('SELECT to_jsonb(x) FROM sc_sim.next_to_delete(%s) x', delay_ms), res, err);
    IF err IS NOT NULL THEN CALL sc_sim.note_error('delete', err); RETURN; END IF;
    room := res ->> 'room';
    EXIT WHEN room IS NULL;
    g := ARRAY(SELECT jsonb_array_elements_text(res -> 'groups')::bigint);
    s := ARRAY(SELECT jsonb_array_elements_text(res -> 'seqs')::bigint);
    CALL sc_sim.txn(format('SELECT to_jsonb(x) FROM sc_sim.unmark_referenced(%L, %L) x', g, s), res, err);
    IF err IS NOT NULL THEN CALL sc_sim.note_error('delete', err); RETURN; END IF;
    g := ARRAY(SELECT jsonb_array_elements_text(res -> 'rest')::bigint);
    s := ARRAY(SELECT jsonb_array_elements_text(res -> 'rest_seqs')::bigint);
    referenced := (res ->> 'referenced')::int;
    done := 0;
    IF cardinality(g) > 0 THEN
      CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.purge_unreferenced(%L, %L, %L, %s))',
                             room, g, s, delay_ms), res, err);
      IF err IS NOT NULL THEN CALL sc_sim.note_error('delete', err); RETURN; END IF;
      done := (res #>> '{}')::int;
    END IF;
    EXIT WHEN done = 0 AND referenced = 0;
  END LOOP;
END $$;

-- A writer session: `kind` is creator | history | deleter | purger | reader. Runs for
-- `seconds`, with random pauses; `delay_ms` is the deletion delay.
CREATE PROCEDURE sc_sim.writer(kind text, wid int, seconds float8, delay_ms bigint DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
  deadline timestamptz := clock_timestamp() + make_interval(secs => seconds);
  instance text := 'sim_' || kind || '_' || wid;
  room text; res jsonb; err text; purge_at timestamptz;
BEGIN
  IF kind = 'purger' THEN
    -- one or two room purges at random moments of the round
    WHILE clock_timestamp() < deadline LOOP
      PERFORM pg_sleep(random() * seconds / 2);
      SELECT room_id INTO room FROM sc_sim.rooms WHERE role = 'victim' AND purged_at IS NULL
      ORDER BY random() LIMIT 1;
      COMMIT;
      EXIT WHEN room IS NULL;
      CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.purge_room_main(%L))', room), res, err);
      IF err IS NOT NULL THEN CALL sc_sim.note_error('purge_room', err); CONTINUE; END IF;
      CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.purge_room_state(%L))', room), res, err);
      IF err IS NOT NULL THEN CALL sc_sim.note_error('purge_room', err); END IF;
    END LOOP;
    RETURN;
  END IF;
  WHILE clock_timestamp() < deadline LOOP
    CASE kind
      WHEN 'creator' THEN
        CALL sc_sim.step_create(instance);
        PERFORM pg_sleep(random() * 0.03);
      WHEN 'history' THEN
        SELECT room_id INTO room FROM sc_sim.rooms WHERE role = 'live' AND purged_at IS NULL
        ORDER BY hot AND random() < 0.3 DESC, random() LIMIT 1;
        COMMIT;
        CALL sc_sim.txn(format('SELECT to_jsonb(sc_sim.purge_history(%L, %s, %L))',
                               room, 2 + floor(random() * 12)::int, random() < 0.5), res, err);
        IF err IS NOT NULL THEN CALL sc_sim.note_error('purge_history', err); END IF;
        PERFORM pg_sleep(0.1 + random() * 0.4);
      WHEN 'deleter' THEN
        CALL sc_sim.step_delete(delay_ms);
        PERFORM pg_sleep(0.05 + random() * 0.25);
      WHEN 'reader' THEN
        CALL sc_sim.txn('SELECT to_jsonb(sc_sim.read_check(10))', res, err);
        IF err IS NOT NULL THEN CALL sc_sim.note_error('read', err); END IF;
        PERFORM pg_sleep(random() * 0.1);
      ELSE
        RAISE EXCEPTION 'unknown writer kind %', kind;
    END CASE;
    COMMIT;
  END LOOP;
END $$;

-- ---------------------------------------------------------------------------------
-- The compressor side
-- ---------------------------------------------------------------------------------

-- One compress_room call in its own transaction, its outcome logged. `hold` keeps the
-- transaction (and so the room's lock) open that many seconds after it returned.
CREATE PROCEDURE sc_sim.compress(tag text, room text, lv text, hold float8 DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE changed bigint; skipped bigint; wrote boolean; st text; msg text;
        t0 timestamptz := clock_timestamp();
BEGIN
  BEGIN
    SELECT c.groups_changed, c.groups_skipped, c.written INTO changed, skipped, wrote
    FROM compress_room(room, levels => lv) c;
    IF hold > 0 THEN
      -- tell the probe (pg_stat_activity) that the room's lock is held from now on
      PERFORM set_config('application_name', current_setting('application_name') || '_holding', true);
      PERFORM pg_sleep(hold);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    -- in the session's log too (the row below is lost if the transaction fails)
    IF st <> '55P03' THEN
      RAISE WARNING 'compress_room(%, %) failed: % %', room, lv, st, msg;
    END IF;
  END;
  INSERT INTO sc_sim.compress_log (tag, room_id, levels, started_at, finished_at, sqlstate, message,
                                   groups_changed, groups_skipped, written)
  VALUES (tag, room, lv, t0, clock_timestamp(), st, msg, changed, skipped, wrote);
END $$;

-- The probe's first session: compress `room` (retrying while the compressors hold it)
-- and keep the transaction open `hold` seconds, logged with tag 'hold'.
CREATE PROCEDURE sc_sim.compress_hold(room text, lv text, hold float8) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..100 LOOP
    CALL sc_sim.compress('hold', room, lv, hold);
    EXIT WHEN NOT EXISTS (SELECT 1 FROM sc_sim.compress_log WHERE id = currval('sc_sim.compress_log_id_seq')
                          AND sqlstate = '55P03');
    COMMIT;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;

-- ---------------------------------------------------------------------------------
-- The snapshot of each round
-- ---------------------------------------------------------------------------------

-- sc_test.fingerprints() for the given groups only (the same query, other roots).
CREATE FUNCTION sc_sim.fingerprints_of(ids bigint[])
RETURNS TABLE (state_group bigint, n bigint, digest text) LANGUAGE sql AS $$
  SELECT * FROM sc_test.fingerprints(ids)
$$;

-- Every group's state at the end of the last check (sc_test.fingerprints() then).
CREATE TABLE sc_sim.last_fp (state_group bigint PRIMARY KEY, n bigint, digest text);

-- sc_test.snapshot(), without recomputing what the last check computed: nothing but
-- the loading of new rooms happens between a check and the next snapshot, so the
-- check's fingerprints plus those of the new groups are exactly sc_test.fingerprints().
CREATE PROCEDURE sc_sim.snapshot() LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM sc_sim.last_fp) THEN
    CALL sc_test.snapshot();
    RETURN;
  END IF;
  TRUNCATE sc_test.before;
  INSERT INTO sc_test.before
    SELECT f.* FROM sc_sim.last_fp f WHERE EXISTS (SELECT 1 FROM state_groups g WHERE g.id = f.state_group);
  INSERT INTO sc_test.before
    SELECT * FROM sc_sim.fingerprints_of(ARRAY(
      SELECT id FROM state_groups g WHERE NOT EXISTS (SELECT 1 FROM sc_sim.last_fp f WHERE f.state_group = g.id)));
END $$;

-- ---------------------------------------------------------------------------------
-- Checks after a round (every row with bad > 0 is a failure)
-- ---------------------------------------------------------------------------------
CREATE FUNCTION sc_sim.check_round(r int)
RETURNS TABLE (check_name text, bad bigint, example text) LANGUAGE plpgsql AS $$
BEGIN
  CREATE TEMP TABLE fp_now ON COMMIT DROP AS
    SELECT g.id AS state_group, f.n, f.digest
    FROM state_groups g LEFT JOIN sc_test.fingerprints() f ON f.state_group = g.id;
  CREATE INDEX ON fp_now (state_group);
  ANALYZE fp_now;
  TRUNCATE sc_sim.last_fp;
  INSERT INTO sc_sim.last_fp SELECT * FROM fp_now WHERE n IS NOT NULL;

  RETURN QUERY SELECT 'groups of the snapshot resolving differently', count(*),
                      min(b.state_group)::text
    FROM sc_test.before b JOIN fp_now f USING (state_group)
    WHERE f.digest IS DISTINCT FROM b.digest OR f.n IS DISTINCT FROM b.n;
  -- (new groups of earlier rounds are in the snapshot, checked above)
  RETURN QUERY SELECT 'new groups not resolving to their intended state', count(*),
                      min(e.state_group)::text
    FROM sc_sim.expected e JOIN fp_now f USING (state_group)
    WHERE e.round = r AND (f.digest IS DISTINCT FROM e.digest OR f.n IS DISTINCT FROM e.n);
  RETURN QUERY SELECT 'groups gone without a Synapse deletion or purge', count(*), min(x.sg)::text
    FROM (SELECT state_group AS sg FROM sc_test.before UNION SELECT state_group FROM sc_sim.expected) x
    WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = x.sg)
      AND NOT EXISTS (SELECT 1 FROM sc_sim.gone d WHERE d.state_group = x.sg);
  RETURN QUERY SELECT 'edges to a predecessor with a higher or equal id', count(*),
                      min(state_group || '>' || prev_state_group)
    FROM state_group_edges WHERE prev_state_group >= state_group;
  RETURN QUERY SELECT 'edges to a predecessor that no longer exists', count(*),
                      min(e.state_group || '>' || e.prev_state_group)
    FROM state_group_edges e
    WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = e.prev_state_group);
  RETURN QUERY SELECT 'groups with several predecessors', count(*), min(x.state_group)::text
    FROM (SELECT state_group FROM state_group_edges GROUP BY 1 HAVING count(*) > 1) x;
  RETURN QUERY SELECT 'edges or rows of groups that do not exist', count(*), min(x.sg)::text
    FROM (SELECT state_group AS sg FROM state_group_edges
          UNION SELECT state_group FROM state_groups_state) x
    WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = x.sg);
  RETURN QUERY SELECT 'groups with one key and two events', count(*), min(x.state_group)::text
    FROM (SELECT state_group FROM state_groups_state GROUP BY state_group, type, state_key
          HAVING count(DISTINCT event_id) > 1) x;
  RETURN QUERY SELECT 'wrong state read by a simulated Synapse transaction', count(*),
                      min(a.who || ' (group ' || a.state_group || ': ' || a.detail || ')')
    FROM sc_sim.anomaly a WHERE a.round = r;
  RETURN QUERY SELECT 'unexpected errors in simulated Synapse transactions', count(*), min(l.detail)
    FROM sc_sim.log l WHERE l.round = r AND l.op = 'writer_error';
  RETURN QUERY SELECT 'compress_room errors other than 55P03/40001/40P01', count(*),
                      min(c.sqlstate || ' ' || c.room_id || ': ' || c.message)
    FROM sc_sim.compress_log c LEFT JOIN sc_sim.rooms m USING (room_id)
    WHERE c.round = r AND c.sqlstate IS NOT NULL AND c.sqlstate NOT IN ('55P03', '40001', '40P01')
      -- a room purged before the call ended: "no such room" is the right answer
      AND NOT (c.sqlstate IN ('42704', 'P0002') AND coalesce(m.purged_at < c.finished_at, false));
  RETURN QUERY SELECT 'a second compress_room of a locked room was not refused with 55P03', count(*),
                      min(coalesce(p.sqlstate, 'returned') || ' ' || p.room_id)
    FROM sc_sim.compress_log p
    WHERE p.round = r AND p.tag = 'probe' AND p.sqlstate IS DISTINCT FROM '55P03'
      AND EXISTS (SELECT 1 FROM sc_sim.compress_log h WHERE h.round = r AND h.tag = 'hold'
                  AND h.room_id = p.room_id AND h.sqlstate IS NULL
                  AND h.started_at < p.started_at AND h.finished_at > p.finished_at);
END $$;

-- Figures of a round (all rounds, not the setup, when r is NULL), one row per counter.
CREATE FUNCTION sc_sim.figures(r int) RETURNS TABLE (what text, n bigint) LANGUAGE sql AS $$
  SELECT * FROM (
    SELECT op AS what, sum(n)::bigint AS n FROM sc_sim.log
    WHERE coalesce(round = r, round > 0) AND op <> 'read' GROUP BY op
    UNION ALL
    SELECT 'groups_read_checked', coalesce(sum(n), 0)::bigint FROM sc_sim.log
    WHERE coalesce(round = r, round > 0) AND op = 'read'
    UNION ALL
    SELECT 'compress_runs', count(*) FROM sc_sim.compress_log WHERE r IS NULL OR round = r
    UNION ALL
    SELECT 'compress_written', count(*) FROM sc_sim.compress_log WHERE (r IS NULL OR round = r) AND written
    UNION ALL
    SELECT 'compress_groups_changed', coalesce(sum(groups_changed), 0)::bigint
    FROM sc_sim.compress_log WHERE (r IS NULL OR round = r) AND written
    UNION ALL
    SELECT 'compress_err_' || sqlstate, count(*) FROM sc_sim.compress_log
    WHERE (r IS NULL OR round = r) AND sqlstate IS NOT NULL GROUP BY sqlstate
  ) f ORDER BY 1
$$;
