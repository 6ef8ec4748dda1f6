-- Test helpers, loaded into each end-to-end test database (schema sc_test).
-- They read state exactly as Synapse does (sc_test.resolved): recursive walk of
-- state_group_edges, then per (type, state_key) the row of the highest state_group wins.
CREATE SCHEMA sc_test;

-- The tests' one form of Synapse's read rule (the engine's is the other): the resolved
-- state of the groups IDS (every group when NULL), one row per (group, type, state_key).
CREATE FUNCTION sc_test.resolved(ids bigint[] DEFAULT NULL)
RETURNS TABLE (state_group bigint, type text, state_key text, event_id text)
LANGUAGE sql STABLE AS $$
  -- UNION (not Synapse's UNION ALL): the same reachable set on sound data, and it
  -- terminates on corrupt data (cycles, several predecessors) where Synapse's would not.
  WITH RECURSIVE sgs(state_group, root) AS (
      SELECT u, u FROM unnest(ids) u
    UNION ALL
      SELECT id, id FROM state_groups WHERE ids IS NULL
    UNION
      SELECT e.prev_state_group, s.root
      FROM state_group_edges e JOIN sgs s ON e.state_group = s.state_group
  )
  SELECT DISTINCT ON (s.root, ss.type, ss.state_key) s.root, ss.type, ss.state_key, ss.event_id
  FROM sgs s JOIN state_groups_state ss ON ss.state_group = s.state_group
  -- event_id breaks ties only for ambiguous groups (one key, two events), where
  -- Synapse's own pick is arbitrary; it keeps the result deterministic.
  ORDER BY s.root, ss.type, ss.state_key, ss.state_group DESC, ss.event_id
$$;

-- One group's resolved state.
CREATE FUNCTION sc_test.resolve(sg bigint)
RETURNS TABLE (type text, state_key text, event_id text) LANGUAGE sql STABLE AS $$
  SELECT r.type, r.state_key, r.event_id FROM sc_test.resolved(ARRAY[sg]) r
$$;

-- Resolved state of the groups IDS (every group when NULL), as a fingerprint (count +
-- md5 of sorted rows).
CREATE FUNCTION sc_test.fingerprints(ids bigint[] DEFAULT NULL)
RETURNS TABLE (state_group bigint, n bigint, digest text) LANGUAGE sql STABLE AS $$
  SELECT r.state_group, count(*), md5(string_agg(r.type || E'\x1f' || r.state_key || E'\x1f' || r.event_id,
                                                 E'\x1e' ORDER BY r.type, r.state_key))
  FROM sc_test.resolved(ids) r GROUP BY r.state_group
$$;

-- A digest of the raw tables: equal digests mean nothing was written.
CREATE FUNCTION sc_test.raw_digest() RETURNS text LANGUAGE sql AS $$
  SELECT md5(
    (SELECT coalesce(string_agg(state_group || '>' || prev_state_group, ',' ORDER BY state_group, prev_state_group), '')
       FROM state_group_edges) || '|' ||
    (SELECT coalesce(string_agg(concat_ws(E'\x1f', state_group, room_id, type, state_key, event_id), E'\x1e'
                                ORDER BY state_group, type, state_key, event_id), '')
       FROM state_groups_state) || '|' ||
    (SELECT coalesce(string_agg(id || room_id, ',' ORDER BY id), '') FROM state_groups))
$$;

CREATE TABLE sc_test.before (state_group bigint PRIMARY KEY, n bigint, digest text);

CREATE PROCEDURE sc_test.snapshot() LANGUAGE sql AS $$
  TRUNCATE sc_test.before;
  INSERT INTO sc_test.before SELECT * FROM sc_test.fingerprints();
$$;

-- Every group resolves as at the last snapshot.
CREATE PROCEDURE sc_test.assert_same_state() LANGUAGE plpgsql AS $$
DECLARE bad bigint; example bigint;
BEGIN
  SELECT count(*), min(coalesce(b.state_group, a.state_group)) INTO bad, example
  FROM sc_test.before b FULL JOIN sc_test.fingerprints() a USING (state_group)
  WHERE b.digest IS DISTINCT FROM a.digest;
  IF bad > 0 THEN
    RAISE EXCEPTION 'resolved state changed for % groups (e.g. %)', bad, example;
  END IF;
END $$;

-- The tree is well formed: at most one predecessor, lower id, chains within max_hops.
-- (A predecessor's keys are a subset of its group's by the read rule itself, since a
-- group's walk includes its predecessor's; what the engine must keep, that the new
-- predecessor holds no key the group did not have, is the same-state check above.)
CREATE PROCEDURE sc_test.assert_tree(max_hops int) LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  SELECT count(*) INTO n FROM (SELECT state_group FROM state_group_edges GROUP BY 1 HAVING count(*) > 1) x;
  IF n > 0 THEN RAISE EXCEPTION '% groups have several predecessors', n; END IF;
  SELECT count(*) INTO n FROM state_group_edges WHERE prev_state_group >= state_group;
  IF n > 0 THEN RAISE EXCEPTION '% edges point to a higher or equal id', n; END IF;
  WITH RECURSIVE sgs(state_group, root, hops) AS (
      SELECT id, id, 0 FROM state_groups
    UNION ALL
      SELECT e.prev_state_group, s.root, s.hops + 1
      FROM state_group_edges e JOIN sgs s ON e.state_group = s.state_group WHERE s.hops <= max_hops
  ) SELECT count(DISTINCT root) INTO n FROM sgs WHERE hops > max_hops;
  IF n > 0 THEN RAISE EXCEPTION '% groups have chains longer than % hops', n, max_hops; END IF;
END $$;

-- Run `sql`; it must fail with SQLSTATE `code` and (our errors) carry a hint.
CREATE PROCEDURE sc_test.assert_error(sql text, code text, need_hint boolean DEFAULT true) LANGUAGE plpgsql AS $$
DECLARE got text; hint text; msg text;
BEGIN
  BEGIN
    EXECUTE sql;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS got = RETURNED_SQLSTATE, hint = PG_EXCEPTION_HINT, msg = MESSAGE_TEXT;
    IF got <> code THEN
      RAISE EXCEPTION 'expected SQLSTATE % from %, got %: %', code, sql, got, msg;
    END IF;
    IF coalesce(hint, '') = '' AND need_hint THEN
      RAISE EXCEPTION 'error from % has no hint: %', sql, msg;
    END IF;
    RETURN;
  END;
  RAISE EXCEPTION 'expected SQLSTATE % from %, but it succeeded', code, sql;
END $$;

CREATE FUNCTION sc_test.rows_total() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM state_groups_state $$;

CREATE FUNCTION sc_test.check(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF ok IS NOT TRUE THEN RAISE EXCEPTION 'check failed: %', what; END IF;
END $$;

-- Compress every room; one result row per room.
CREATE FUNCTION sc_test.compress_all(dry boolean DEFAULT false, lv text DEFAULT '100,50,25')
RETURNS TABLE (room_id text, state_groups bigint, groups_changed bigint, groups_skipped bigint,
               rows_before bigint, rows_after bigint, forced_snapshots bigint, max_chain_after int,
               dry_run boolean, written boolean, elapsed_ms bigint)
LANGUAGE sql AS $$
  SELECT c.* FROM (SELECT DISTINCT room_id FROM state_groups) r,
         LATERAL compress_room(r.room_id, levels => lv, dry_run => dry) c
$$;

-- A room written the way Synapse writes one, with no randomness (for suites whose
-- expected output names groups): groups first .. first+n-1 in one chain, a full
-- snapshot every `every` groups and otherwise a delta of one member, each group the
-- state after its own event (event_to_state_groups); the members who join in the
-- room's first event and never change (`stable`) make the snapshots big. Returns the
-- last group.
CREATE FUNCTION sc_test.make_room(room text, n int, first bigint, every int DEFAULT 100,
                                  stable int DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE id bigint; ev text; member text;
BEGIN
  CREATE TEMP TABLE sc_cur (type text, state_key text, event_id text, PRIMARY KEY (type, state_key));
  INSERT INTO sc_cur VALUES ('m.room.create', '', '$create_' || first),
                            ('m.room.power_levels', '', '$power_' || first);
  INSERT INTO sc_cur SELECT 'm.room.member', '@s' || i || ':example.org', '$join_' || first || '_' || i
                     FROM generate_series(1, stable) i;
  INSERT INTO rooms (room_id, is_public) VALUES (room, false) ON CONFLICT DO NOTHING;
  FOR g IN 0..n - 1 LOOP
    id := first + g;
    ev := '$e' || id;
    member := '@u' || (g % 40) || ':example.org';
    INSERT INTO state_groups (id, room_id, event_id) VALUES (id, room, ev);
    INSERT INTO event_to_state_groups (event_id, state_group) VALUES (ev, id);
    INSERT INTO sc_cur VALUES ('m.room.member', member, ev)
      ON CONFLICT (type, state_key) DO UPDATE SET event_id = excluded.event_id;
    IF g % every = 0 THEN
      INSERT INTO state_groups_state SELECT id, room, type, state_key, event_id FROM sc_cur;
    ELSE
      INSERT INTO state_group_edges VALUES (id, id - 1);
      INSERT INTO state_groups_state VALUES (id, room, 'm.room.member', member, ev);
    END IF;
  END LOOP;
  DROP TABLE sc_cur;
  PERFORM setval('state_group_id_seq', greatest(id, (SELECT last_value FROM state_group_id_seq)));
  RETURN id;
END $$;

-- The error `sql` raises, as 'SQLSTATE: message', with ' HINT: hint' when asked for
-- and there is one (NULL when it succeeds).
CREATE FUNCTION sc_test.error_of(sql text, with_hint boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE st text; msg text; hint text;
BEGIN
  EXECUTE sql;
  RETURN NULL;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
  RETURN st || ': ' || msg || CASE WHEN with_hint AND hint <> '' THEN ' HINT: ' || hint ELSE '' END;
END $$;

-- A second session to this database under `name`, as Synapse's own connection would
-- be (dblink: the case checks first that the server has it).
CREATE FUNCTION sc_test.connect(name text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  CREATE EXTENSION IF NOT EXISTS dblink SCHEMA public;
  RETURN public.dblink_connect(name, format('dbname=%s port=%s host=%s user=%s',
    current_database(), current_setting('port'),
    split_part(current_setting('unix_socket_directories'), ',', 1), session_user));
END $$;
