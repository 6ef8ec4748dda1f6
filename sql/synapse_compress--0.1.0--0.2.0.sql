-- synapse_compress 0.1.0 -> 0.2.0, run by `ALTER EXTENSION synapse_compress UPDATE`
-- on a database created with 0.1.0 (commit c7e1b0a, tag v0.1.0).
--
-- Rules for this script (and every later synapse_compress--A--B.sql):
-- - Keep every row: each room's saved levels and progress (state_compressor_*), the
--   room queue, the run history (synapse_compress.runs) and the pause state
--   (synapse_compress.control). ALTER, never DROP and re-create, a table with rows.
-- - After it, the extension's objects must be exactly those a fresh CREATE EXTENSION
--   of the new version makes: pgrx-tests/upgrade/run.sh compares them (functions'
--   signatures and bodies, views, tables' columns) and fails on any difference. So a
--   change to the generated or hand-written SQL (src/, sql/schedule.sql,
--   sql/finalize.sql) needs its counterpart here: CREATE OR REPLACE FUNCTION for a
--   changed body, DROP FUNCTION + CREATE for a changed signature, ALTER TABLE for
--   a new column.
-- - pgrx's generated SQL for #[pg_extern] functions: copy the statements from the new
--   version's install script (`cargo pgrx schema`) for the functions that changed.
-- Sections below: one per change, in the order of CHANGELOG.md.

-- 1. The existing tool's tables (state_compressor_state, state_compressor_progress,
--    state_compressor_total_progress) are never members of the extension, so that
--    DROP EXTENSION leaves them and their rows: an admin can go back to
--    synapse_auto_compressor, or reinstall, without losing any room's progress.
--    0.1.0 made them members when it created them; release them (ALTER EXTENSION
--    DROP also takes them out of pg_dump's extension config list). Tables 0.1.0
--    adopted from the tool were never members and are left as they are.
--    Rewrites now run as the owner of Synapse's state tables (section 2), so the
--    released tables pass to that owner, as the tool itself (connected as Synapse's
--    role) would have created them.
DO $$
DECLARE
    t text;
    state_owner name;
BEGIN
    SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO state_owner
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = 'state_groups_state' AND c.relkind IN ('r', 'p')
    ORDER BY n.nspname = '@extschema@' DESC, n.nspname LIMIT 1;
    FOREACH t IN ARRAY ARRAY['state_compressor_state', 'state_compressor_progress',
                             'state_compressor_total_progress'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                   WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                     AND d.objid = pg_catalog.to_regclass(pg_catalog.quote_ident('@extschema@') || '.' || t)
                     AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                     AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e
                                       WHERE e.extname = 'synapse_compress')
                     AND d.deptype = 'e') THEN
            EXECUTE pg_catalog.format('ALTER EXTENSION synapse_compress DROP TABLE %I.%I', '@extschema@', t);
            IF state_owner IS NOT NULL THEN
                EXECUTE pg_catalog.format('ALTER TABLE %I.%I OWNER TO %I', '@extschema@', t, state_owner);
            END IF;
        END IF;
    END LOOP;
END $$;

-- 2. Least privilege: every access to Synapse's tables runs as their owner, security-
--    restricted, with Synapse's tables named with their schema and every function's
--    search_path pinned.
-- Where Synapse's tables are: qualified everywhere, never found through search_path.
ALTER TABLE synapse_compress.control ADD COLUMN state_schema text NOT NULL DEFAULT 'public';
UPDATE synapse_compress.control SET state_schema = coalesce(
    (SELECT n.nspname FROM pg_catalog.pg_class c
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = 'state_groups_state' AND c.relkind IN ('r', 'p')
     ORDER BY n.nspname = '@extschema@' DESC, n.nspname LIMIT 1),
    'public');

-- Every function pins its search_path.
ALTER FUNCTION compress_room(text, text, boolean, bigint, bigint, bigint) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION synapse_compress.begin_run(text) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION synapse_compress.run_chunk(bigint) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION synapse_compress.end_run(bigint, text, text) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION synapse_compress.wake_workers() SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION synapse_compress.worker_registered() SET search_path TO pg_catalog, pg_temp;

-- Synapse's tables are read as their owner: the view's helpers and reset_room move
-- from PL/pgSQL (run with the reader's rights) into the library.
DROP VIEW synapse_compress.rooms;
DROP FUNCTION synapse_compress.room_state_groups(text);
DROP FUNCTION synapse_compress.reset_room(text);

CREATE FUNCTION synapse_compress."room_state_groups"("room_id" TEXT) RETURNS bigint
STABLE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'room_state_groups_wrapper';

CREATE FUNCTION synapse_compress."room_progress"() RETURNS TABLE (
    "room_id" TEXT,
    "compressed_up_to" bigint,
    "levels" TEXT
)
STRICT STABLE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'room_progress_wrapper';

CREATE FUNCTION synapse_compress."reset_room"("room_id" TEXT) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'reset_room_wrapper';
-- Synapse's tables are read by room_state_groups() and room_progress(), which run as
-- their owner (src/admin.rs): a view must not run the owner's code as its reader.
CREATE VIEW synapse_compress.rooms AS
SELECT
    q.room_id,
    synapse_compress.room_state_groups(q.room_id) AS state_groups,
    p.compressed_up_to,
    p.levels,
    q.pending_groups,
    q.pending_rows,
    q.rows_saved,
    q.chunks_written,
    q.chunks_not_saved,
    q.groups_skipped,
    q.last_chunk_at,
    q.last_error,
    q.error_count,
    q.next_retry
FROM synapse_compress.room_queue q
LEFT JOIN synapse_compress.room_progress() p USING (room_id);

CREATE FUNCTION synapse_compress.set_state_schema(schema_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF schema_name IS NULL THEN
        RAISE EXCEPTION 'schema_name must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the schema holding Synapse''s state_groups_state, e.g. ''public''.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = schema_name) THEN
        RAISE EXCEPTION 'schema % does not exist', quote_ident(schema_name)
            USING ERRCODE = 'invalid_schema_name',
                  HINT = 'Find Synapse''s tables with: SELECT schemaname FROM pg_tables WHERE tablename = ''state_groups_state''.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = schema_name AND c.relname = 'state_groups_state'
                     AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'schema % has no table state_groups_state', quote_ident(schema_name)
            USING ERRCODE = 'undefined_table',
                  HINT = 'Find Synapse''s tables with: SELECT schemaname FROM pg_tables WHERE tablename = ''state_groups_state''.';
    END IF;
    UPDATE synapse_compress.control SET state_schema = schema_name;
END $$;

-- One scheduled run in the foreground, committing after every chunk: for servers that
-- cannot preload the library, or to compress now under the admin's eye.
-- A procedure with SET clauses may not COMMIT, so the search_path is pinned for each
-- transaction by its first statement (set_config(..., true) lasts until COMMIT), before
-- any expression is planned: the database's search_path is its owner's to set, and
-- could put look-alike functions or operators ahead of pg_catalog.
CREATE OR REPLACE PROCEDURE compress_database(time_budget interval DEFAULT NULL, max_chunks integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    run bigint;
    r record;
    started timestamptz := pg_catalog.clock_timestamp();
    chunks integer := 0;
    outcome text := 'done';
    pause_ms integer;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF max_chunks IS NOT NULL AND max_chunks < 1 THEN
        RAISE EXCEPTION 'max_chunks must be positive, not %', max_chunks
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave it NULL for no limit.';
    END IF;
    IF time_budget IS NOT NULL AND time_budget <= interval '0' THEN
        RAISE EXCEPTION 'time_budget must be positive, not %', time_budget
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave it NULL for no limit.';
    END IF;
    run := synapse_compress.begin_run('procedure');
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    LOOP
        IF max_chunks IS NOT NULL AND chunks >= max_chunks
           OR time_budget IS NOT NULL AND clock_timestamp() - started >= time_budget THEN
            outcome := 'budget';
            EXIT;
        END IF;
        r := synapse_compress.run_chunk(run);
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        EXIT WHEN r.outcome = 'no_work';
        chunks := chunks + 1;
        IF r.outcome = 'failed' THEN
            RAISE NOTICE 'compress_database: room % skipped: %', r.room_id, r.message;
        END IF;
        SELECT s.setting::integer INTO pause_ms FROM pg_catalog.pg_settings s
         WHERE s.name = 'synapse_compress.chunk_pause';
        IF coalesce(pause_ms, 0) > 0 THEN
            PERFORM pg_sleep(pause_ms / 1000.0);
        END IF;
    END LOOP;
    PERFORM synapse_compress.end_run(run, outcome, NULL);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT * INTO r FROM synapse_compress.runs WHERE run_id = run;
    RAISE NOTICE 'compress_database: % chunks in % rooms, % groups, rows % -> %, % errors (run %, %)',
        r.chunks, r.rooms, r.groups, r.rows_before, r.rows_after, r.errors, run, outcome;
END $$;

-- Grants and comments of what was (re)created above.
REVOKE EXECUTE ON FUNCTION synapse_compress.reset_room(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.set_state_schema(text) FROM PUBLIC;
COMMENT ON FUNCTION synapse_compress.reset_room(text) IS
'Forget a room''s saved levels, progress and errors: the next run compresses it again from its first group with fresh levels.';
COMMENT ON FUNCTION synapse_compress.room_state_groups(text) IS
'Number of state groups of a room in Synapse''s state_groups (the rooms view''s state_groups column), read as the tables'' owner.';
COMMENT ON FUNCTION synapse_compress.room_progress() IS
'Every room''s saved progress in the existing tool''s tables: compressed_up_to (state_compressor_progress) and levels '
'(length/size, finest first, from state_compressor_state); read as the tables'' owner. Empty before the first run.';
COMMENT ON FUNCTION synapse_compress.set_state_schema(text) IS
'Set the schema holding Synapse''s state tables (recorded at CREATE EXTENSION: the schema where state_groups_state was found, else public). '
'Rewrites run as the owner of those tables, security-restricted; see the README, Security.';
COMMENT ON VIEW synapse_compress.rooms IS
'Per room: state groups, compressed up to (state_compressor_progress), saved levels (length/size, finest first), '
'pending groups and rows, rows saved, chunks written and undone, last error, next retry.';

-- N. Re-compression of what Synapse de-deltas, and of groups that commit late.
-- Re-compression (README, "Keeping rooms compressed"; src/schedule.rs, `revisit`): what
-- each scheduled run's start remembers to find groups below a room's progress that
-- Synapse de-deltaed, or that committed after a run had passed them.
ALTER TABLE synapse_compress.control
    -- state_groups' deleted-tuple counter when the last scan for de-deltaed groups ran
    -- (NULL: never; the first scan records the snapshots it finds as a baseline).
    ADD COLUMN groups_deleted_seen bigint,
    -- The snapshot and the newest group of the last run's start, and the ids up to
    -- it that were missing then (in flight or rolled back): found later, they
    -- committed late.
    ADD COLUMN late_snapshot pg_snapshot,
    ADD COLUMN late_upto bigint NOT NULL DEFAULT 0,
    ADD COLUMN late_gaps bigint[] NOT NULL DEFAULT '{}',
    -- Ids up to it can no longer commit late.
    ADD COLUMN late_floor bigint NOT NULL DEFAULT 0;
-- Full snapshots (groups without an edge) that scheduled runs left at or below a
-- room's progress: a snapshot below the progress that is not here was made by someone
-- else (Synapse's deletion de-deltas the children of the groups it deletes).
CREATE TABLE synapse_compress.room_snapshots (
    room_id text NOT NULL,
    state_group bigint NOT NULL,
    PRIMARY KEY (room_id, state_group)
);
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.room_snapshots', '');
COMMENT ON TABLE synapse_compress.room_snapshots IS
'Full snapshots that scheduled runs left at or below each room''s progress; other snapshots found there (de-deltaed by Synapse) are compressed again.';
