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

-- The orders scheduled runs take rooms in, room_id breaking ties: the most rows first,
-- and the rooms that fit in what is left of a batch, largest first. A step reads a few
-- rooms in an index's order, not every pending room (src/schedule.rs, `candidates_sql`).
DROP INDEX synapse_compress.room_queue_pending;
CREATE INDEX room_queue_pending ON synapse_compress.room_queue (pending_rows DESC, room_id)
    WHERE pending_groups > 0;
CREATE INDEX room_queue_fill ON synapse_compress.room_queue (pending_groups DESC, room_id)
    WHERE pending_groups > 0;

-- Every function pins its search_path.
ALTER FUNCTION compress_room(text, text, boolean, bigint, bigint, bigint) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION synapse_compress.begin_run(text) SET search_path TO pg_catalog, pg_temp;
-- run_chunk became run_step (the run policy at each chunk boundary, then the chunk).
DROP FUNCTION synapse_compress.run_chunk(bigint);
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
-- What compression won on disk, and what VACUUM can do with it: Synapse's three state
-- tables, read from the catalogs and the statistics collector only (pg_class,
-- pg_total_relation_size, pg_stat_get_*_tuples), which need no privilege on the tables:
-- a pg_monitor role can read this view. One row per state table.
CREATE VIEW synapse_compress.space AS
SELECT
    t.relname::text AS table_name,
    t.total_bytes,
    t.heap_bytes,
    t.live_tuples,
    t.dead_tuples,
    round(t.total_bytes::numeric / nullif(t.live_tuples + t.dead_tuples, 0), 1) AS row_bytes,
    round(t.dead_tuples * t.total_bytes::numeric / nullif(t.live_tuples + t.dead_tuples, 0))::bigint
        AS vacuum_reusable_bytes_estimate,
    greatest(t.total_bytes - round(t.live_tuples * w.packed_row_bytes
                                   * t.total_bytes::numeric / nullif(t.heap_bytes, 0)), 0)::bigint
        AS vacuum_full_returnable_bytes_estimate
FROM synapse_compress.control c
JOIN pg_catalog.pg_namespace n ON n.nspname = c.state_schema
CROSS JOIN LATERAL (
    SELECT r.relname, pg_catalog.pg_total_relation_size(r.oid) AS total_bytes,
           pg_catalog.pg_relation_size(r.oid) AS heap_bytes,
           pg_catalog.pg_stat_get_live_tuples(r.oid) AS live_tuples,
           pg_catalog.pg_stat_get_dead_tuples(r.oid) AS dead_tuples
    FROM pg_catalog.pg_class r
    WHERE r.relnamespace = n.oid AND r.relkind IN ('r', 'p')
      AND r.relname IN ('state_groups_state', 'state_group_edges', 'state_groups')) t
-- A packed row: tuple header and line pointer (28 bytes) and the columns' average
-- widths; pg_stats shows them only to roles that may read the table, else NULL.
LEFT JOIN LATERAL (
    SELECT 28 + sum(s.avg_width) AS packed_row_bytes
    FROM pg_catalog.pg_stats s
    WHERE s.schemaname = n.nspname AND s.tablename = t.relname AND NOT s.inherited
    HAVING count(*) > 0) w ON true;

-- (Its last three columns come from section 4's room_settings, created here first.)
CREATE TABLE synapse_compress.room_settings (
    room_id text PRIMARY KEY,
    excluded boolean NOT NULL DEFAULT false,
    priority int NOT NULL DEFAULT 0,
    -- NULL: synapse_compress.levels; else validated by set_room_levels.
    levels text
);
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.room_settings', '');
-- Synapse's tables are read by room_state_groups() and room_progress(), which run as
-- their owner (src/rooms.rs): a view must not run the owner's code as its reader.
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
    q.next_retry,
    round(q.rows_saved * (SELECT x.row_bytes FROM synapse_compress.space x
                          WHERE x.table_name = 'state_groups_state'))::bigint AS bytes_saved_estimate,
    coalesce(rs.excluded, false) AS excluded,
    coalesce(rs.priority, 0) AS priority,
    rs.levels AS levels_setting
FROM synapse_compress.room_queue q
LEFT JOIN synapse_compress.room_progress() p USING (room_id)
LEFT JOIN synapse_compress.room_settings rs ON rs.room_id = q.room_id;

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

CREATE FUNCTION synapse_compress."run_step"(
    "run_id" bigint,
    "elapsed" interval DEFAULT '0',
    "chunks" INT DEFAULT 0,
    "time_budget" interval DEFAULT NULL,
    "max_chunks" INT DEFAULT NULL
) RETURNS TABLE (
    "outcome" TEXT,
    "room_id" TEXT,
    "groups" bigint,
    "groups_changed" bigint,
    "rows_before" bigint,
    "rows_after" bigint,
    "message" TEXT,
    "run_end" TEXT,
    "pause_ms" INT,
    "chunks_done" INT
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'run_step_wrapper';
REVOKE EXECUTE ON FUNCTION synapse_compress.run_step(bigint, interval, integer, interval, integer) FROM PUBLIC;
COMMENT ON FUNCTION synapse_compress.run_step(bigint, interval, integer, interval, integer) IS
'Internal (CALL compress_database() uses it; the worker runs the same code): one step of a run: the run policy at this chunk boundary, then the next chunk, or a batch of small rooms holding no more than synapse_compress.chunk_size groups together (chunks_done). run_end says how the run ends (NULL: go on after pause_ms).';

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
    outcome text;
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
    -- run_step applies the run policy (the same as the worker's) and runs one chunk,
    -- or a batch of small rooms (chunks_done).
    LOOP
        r := synapse_compress.run_step(run, pg_catalog.clock_timestamp() - started, chunks,
                                       time_budget, max_chunks);
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        EXIT WHEN r.run_end IS NOT NULL;
        chunks := chunks + r.chunks_done;
        IF r.outcome = 'failed' THEN
            RAISE NOTICE 'compress_database: room % skipped: %', r.room_id, r.message;
        END IF;
        IF r.pause_ms > 0 THEN
            PERFORM pg_catalog.pg_sleep(r.pause_ms / 1000.0);
        END IF;
    END LOOP;
    outcome := r.run_end;
    PERFORM synapse_compress.end_run(run, outcome, r.message);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT * INTO r FROM synapse_compress.runs WHERE run_id = run;
    IF r.rooms_excluded > 0 THEN
        RAISE NOTICE 'compress_database: % rooms with work left out by synapse_compress.exclude_room()', r.rooms_excluded;
    END IF;
    RAISE NOTICE 'compress_database: % chunks in % rooms, % groups, rows % -> %, % errors (run %, %)',
        r.chunks, r.rooms, r.groups, r.rows_before, r.rows_after, r.errors, run, outcome;
END $$;
COMMENT ON PROCEDURE compress_database(interval, integer) IS
'One scheduled run in the foreground: compresses the rooms with the most uncompressed rows first, '
'one chunk (synapse_compress.chunk_size groups, of one room or of several small ones) per transaction, committing the chunk with the room''s saved levels '
'and progress (state_compressor_progress / state_compressor_state, shared with synapse_auto_compressor). '
'Stops when no work is left, after time_budget, or after max_chunks chunks; the next run continues. '
'A room that fails is recorded in synapse_compress.rooms and retried later. Must be CALLed outside a transaction block.';

-- plan_room and plan_room_json (issue 12): what compress_room would do, group by group.
CREATE FUNCTION "plan_room"(
    "room_id" TEXT,
    "levels" TEXT DEFAULT NULL,
    "after_group" bigint DEFAULT 0,
    "max_groups" bigint DEFAULT 10000
) RETURNS TABLE (
    "state_group" bigint,
    "old_prev" bigint,
    "new_prev" bigint,
    "rows_before" bigint,
    "rows_after" bigint,
    "depth" INT,
    "action" TEXT,
    "reason" TEXT
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'plan_room_wrapper';

CREATE FUNCTION "plan_room_json"(
    "room_id" TEXT,
    "levels" TEXT DEFAULT NULL,
    "after_group" bigint DEFAULT 0,
    "max_groups" bigint DEFAULT 10000
) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'plan_room_json_wrapper';

-- What was won (issue 12): the state tables' size, dead tuples and what VACUUM can do (the
--    space view, created before rooms above, which uses it), bytes saved, and the
--    current run's percent done and ETA, as new columns at the end of status and rooms
--    (rooms is re-created above); plain metrics for Prometheus exporters (the metrics
--    view).

CREATE FUNCTION synapse_compress."window_wait"(
    "minute_of_day" INT
) RETURNS INT
STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'window_wait_wrapper';

-- When a scheduled run may start at or after `at`: `at` if synapse_compress.window is
-- open then, else the window's next opening (times of day in the session's time zone,
-- which is the server's unless the client set another; the worker uses the server's).
CREATE FUNCTION synapse_compress.window_start(at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE x.wait WHEN 0 THEN at ELSE date_trunc('minute', at) + make_interval(mins => x.wait) END
    FROM (SELECT synapse_compress.window_wait((extract(hour FROM at) * 60 + extract(minute FROM at))::int) AS wait) x
$$;

CREATE OR REPLACE VIEW synapse_compress.status AS
SELECT
    synapse_compress.worker_registered() AS worker_registered,
    (SELECT count(*) FROM pg_stat_activity a
      WHERE a.backend_type = 'synapse_compress worker')::int AS workers_running,
    current_setting('synapse_compress.enabled', true)::boolean AS enabled,
    c.paused,
    cur.run_id AS current_run,
    cur.current_room,
    cur.current_group,
    last.started_at AS last_run_started,
    last.finished_at AS last_run_finished,
    last.outcome AS last_run_outcome,
    -- The worker starts a run only inside synapse_compress.window.
    CASE WHEN c.paused OR NOT coalesce(current_setting('synapse_compress.enabled', true)::boolean, false)
              OR NOT synapse_compress.worker_registered() THEN NULL
         WHEN cur.run_id IS NOT NULL THEN cur.started_at
         WHEN c.wake_requested_at > coalesce(last.started_at, '-infinity')
              THEN synapse_compress.window_start(c.wake_requested_at)
         ELSE synapse_compress.window_start(coalesce(last.finished_at, now())
              + make_interval(secs => (SELECT s.setting::int FROM pg_settings s
                                       WHERE s.name = 'synapse_compress.interval')))
    END AS next_run,
    c.rows_saved AS rows_saved_total,
    (SELECT count(*) FROM synapse_compress.room_queue q WHERE q.pending_groups > 0) AS rooms_pending,
    (SELECT coalesce(sum(q.pending_rows), 0) FROM synapse_compress.room_queue q) AS rows_pending,
    (SELECT count(*) FROM synapse_compress.room_queue q WHERE q.error_count > 0) AS rooms_failing,
    round(c.rows_saved * sp.row_bytes)::bigint AS bytes_saved_estimate,
    sp.state_tables_bytes,
    sp.state_dead_tuples,
    sp.vacuum_reusable_bytes_estimate,
    sp.vacuum_full_returnable_bytes_estimate,
    round(100.0 * cur.groups / nullif(cur.groups + pend.groups, 0), 1) AS run_percent_done,
    CASE WHEN cur.groups > 0
         THEN clock_timestamp() + (clock_timestamp() - cur.started_at) * (pend.groups::float8 / cur.groups)
    END AS run_eta
FROM synapse_compress.control c
-- Named columns, not *: a view stores *'s expansion, and an update that adds a column
-- to runs would leave an upgraded view unlike a fresh one.
LEFT JOIN LATERAL (SELECT r.run_id, r.current_room, r.current_group, r.started_at, r.groups
                   FROM synapse_compress.runs r WHERE r.outcome = 'running'
                   ORDER BY r.run_id DESC LIMIT 1) cur ON true
LEFT JOIN LATERAL (SELECT r.started_at, r.finished_at, r.outcome
                   FROM synapse_compress.runs r WHERE r.outcome <> 'running'
                   ORDER BY r.run_id DESC LIMIT 1) last ON true
CROSS JOIN (SELECT coalesce(sum(q.pending_groups), 0) AS groups FROM synapse_compress.room_queue q) pend
CROSS JOIN (SELECT sum(x.total_bytes)::bigint AS state_tables_bytes,
                   max(x.dead_tuples) FILTER (WHERE x.table_name = 'state_groups_state') AS state_dead_tuples,
                   max(x.row_bytes) FILTER (WHERE x.table_name = 'state_groups_state') AS row_bytes,
                   sum(x.vacuum_reusable_bytes_estimate)::bigint AS vacuum_reusable_bytes_estimate,
                   sum(x.vacuum_full_returnable_bytes_estimate)::bigint AS vacuum_full_returnable_bytes_estimate
            FROM synapse_compress.space x) sp;

-- Plain numeric metrics for a Prometheus SQL exporter (postgres_exporter's custom
-- queries, sql_exporter): one row per metric, named as Prometheus names them. Read
-- from the views above; granted to pg_monitor. A value unknown now is NaN.
CREATE VIEW synapse_compress.metrics AS
SELECT m.metric, coalesce(m.value::double precision, 'NaN') AS value, m.type, m.help
FROM synapse_compress.status s
CROSS JOIN LATERAL (VALUES
    ('synapse_compress_rows_saved_total', s.rows_saved_total::numeric, 'counter',
     'State rows (state_groups_state) removed by scheduled runs since installation.'),
    ('synapse_compress_bytes_saved_estimate', s.bytes_saved_estimate::numeric, 'gauge',
     'Rows saved times the bytes a state row takes now (table and indexes); see the status view.'),
    ('synapse_compress_rows_pending', s.rows_pending::numeric, 'gauge',
     'State rows of groups not yet compressed.'),
    ('synapse_compress_rooms_pending', s.rooms_pending::numeric, 'gauge',
     'Rooms with groups not yet compressed.'),
    ('synapse_compress_rooms_failing', s.rooms_failing::numeric, 'gauge',
     'Rooms whose last chunk failed (retried later; see the rooms view).'),
    ('synapse_compress_state_tables_bytes', s.state_tables_bytes::numeric, 'gauge',
     'Size of Synapse''s state tables with their indexes and TOAST.'),
    ('synapse_compress_state_dead_tuples', s.state_dead_tuples::numeric, 'gauge',
     'Dead tuples in state_groups_state (what VACUUM has yet to clean).'),
    ('synapse_compress_vacuum_reusable_bytes_estimate', s.vacuum_reusable_bytes_estimate::numeric, 'gauge',
     'Bytes of dead tuples in the state tables that VACUUM would make reusable.'),
    ('synapse_compress_vacuum_full_returnable_bytes_estimate', s.vacuum_full_returnable_bytes_estimate::numeric, 'gauge',
     'Bytes VACUUM FULL or pg_repack could give back to the file system (NaN when the reader cannot see pg_stats).'),
    ('synapse_compress_paused', s.paused::int::numeric, 'gauge',
     '1 when pause() is in force.'),
    ('synapse_compress_workers_running', s.workers_running::numeric, 'gauge',
     'Background workers running.'),
    ('synapse_compress_run_running', (s.current_run IS NOT NULL)::int::numeric, 'gauge',
     '1 while a scheduled run is under way.'),
    ('synapse_compress_run_percent_done', s.run_percent_done, 'gauge',
     'Groups the current run has done, percent of those it has and had pending.'),
    ('synapse_compress_run_eta_timestamp_seconds', extract(epoch FROM s.run_eta), 'gauge',
     'When the current run should end at its rate so far (Unix time).'),
    ('synapse_compress_last_run_duration_seconds', extract(epoch FROM s.last_run_finished - s.last_run_started), 'gauge',
     'Duration of the last finished run.'),
    ('synapse_compress_last_run_finished_timestamp_seconds', extract(epoch FROM s.last_run_finished), 'gauge',
     'When the last run finished (Unix time).'),
    ('synapse_compress_last_run_errors', (SELECT r.errors FROM synapse_compress.runs r
                                          WHERE r.outcome <> 'running'
                                          ORDER BY r.run_id DESC LIMIT 1)::numeric, 'gauge',
     'Chunks that failed in the last finished run.')
) AS m(metric, value, type, help);

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
'pending groups and rows, rows saved, chunks written and undone, last error, next retry; '
'bytes_saved_estimate (rows_saved times state_groups_state''s bytes per row now: see the space view); '
'its room_settings: excluded, priority, levels_setting (NULL: synapse_compress.levels).';
COMMENT ON FUNCTION synapse_compress.window_wait(integer) IS
'Minutes from a minute of the day (0-1439) until synapse_compress.window is open: 0 inside it or when it is empty. Used by window_start().';
COMMENT ON FUNCTION synapse_compress.window_start(timestamptz) IS
'When a scheduled run may start at or after the given time: that time if synapse_compress.window is open then, else the window''s next opening. Used by the status view''s next_run.';
COMMENT ON VIEW synapse_compress.status IS
'One row: is the worker registered and running, enabled, paused; the current run, room and group; the last run and its outcome; the next run; totals; '
'bytes_saved_estimate (rows_saved_total times state_groups_state''s bytes per row now, table and indexes: see the space view), '
'the state tables'' size and state_groups_state''s dead tuples, what VACUUM would make reusable and VACUUM FULL / pg_repack give back (sums of the space view); '
'run_percent_done (groups the current run did, of those plus the groups still pending) and run_eta (at the run''s rate so far).';

-- Monitoring: the metrics and space views read no Synapse table, only the extension's
-- bookkeeping and the catalogs; pg_monitor (and roles granted it) may read them.
GRANT USAGE ON SCHEMA synapse_compress TO pg_monitor;
GRANT SELECT ON synapse_compress.metrics, synapse_compress.space TO pg_monitor;
COMMENT ON VIEW synapse_compress.space IS
'Per state table (state_groups_state, state_group_edges, state_groups): total_bytes (pg_total_relation_size: heap, indexes, TOAST), heap_bytes, '
'live_tuples and dead_tuples (statistics collector), row_bytes (total_bytes per row version now, free space included), '
'vacuum_reusable_bytes_estimate (dead tuples times row_bytes: what plain VACUUM makes reusable inside the files, without giving it back), '
'vacuum_full_returnable_bytes_estimate (total_bytes minus the live rows packed, a packed row being 28 bytes plus pg_stats'' avg_width of its columns, '
'indexes in proportion: what VACUUM FULL or pg_repack could give back to the file system; NULL for a role that may not read the table''s pg_stats). '
'Catalog functions only: no privilege on Synapse''s tables is needed.';
COMMENT ON VIEW synapse_compress.metrics IS
'Plain numeric metrics for a Prometheus SQL exporter: metric (synapse_compress_*), value (NaN when unknown now), type (counter or gauge), help. '
'Read by pg_monitor; see the README for postgres_exporter and sql_exporter configurations.';
-- A plan reads the state tables as their owner: for those an admin grants it to, as
-- compress_room's dry run.
REVOKE EXECUTE ON FUNCTION plan_room(text, text, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION plan_room_json(text, text, bigint, bigint) FROM PUBLIC;
COMMENT ON FUNCTION plan_room(text, text, bigint, bigint) IS
'What compress_room(room_id, levels, dry_run => true, after_group => after_group, max_groups => max_groups) would do, one row per state group: '
'state_group, old_prev (stored predecessor), new_prev, rows_before, rows_after, depth (hops to a snapshot after the plan; NULL when skipped), '
'action (kept, rewritten or skipped) and reason. The same dry run (same reads, same planner): writes nothing, takes no row locks; '
'sum(rows_after) is the dry run''s rows_after. levels NULL: synapse_compress.levels. '
'max_groups (default 10000) bounds the rows held in memory.';
COMMENT ON FUNCTION plan_room_json(text, text, bigint, bigint) IS
'plan_room as one jsonb document, the room''s tree after the plan for drawing: room_id, levels, state_groups, rows_before, rows_after, max_depth, '
'and nodes [{id, prev (after the plan), old_prev, depth, rows (after), rows_before, action}]. Writes nothing, takes no row locks.';

-- 3. Quiet hours (synapse_compress.window): a worker's run that the window ends
--    records the outcome 'window'.
ALTER TABLE synapse_compress.runs DROP CONSTRAINT runs_outcome_check;
ALTER TABLE synapse_compress.runs ADD CONSTRAINT runs_outcome_check
    CHECK (outcome IN ('running', 'done', 'budget', 'paused', 'stopped', 'crashed', 'failed', 'window'));

-- 4. Per-room control (synapse_compress.room_settings, created with the rooms view in
--    section 2): the functions that set it, and the runs' count of excluded rooms.
ALTER TABLE synapse_compress.runs ADD COLUMN rooms_excluded int NOT NULL DEFAULT 0;
CREATE FUNCTION synapse_compress."exclude_room"("room_id" TEXT) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'exclude_room_wrapper';
CREATE FUNCTION synapse_compress."include_room"("room_id" TEXT) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'include_room_wrapper';
CREATE FUNCTION synapse_compress."set_room_priority"("room_id" TEXT, "priority" INT) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'set_room_priority_wrapper';
CREATE FUNCTION synapse_compress."set_room_levels"("room_id" TEXT, "levels" TEXT) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'set_room_levels_wrapper';

-- Per-room control: for superusers and roles an admin grants it to.
REVOKE EXECUTE ON FUNCTION synapse_compress.exclude_room(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.include_room(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.set_room_priority(text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.set_room_levels(text, text) FROM PUBLIC;
COMMENT ON FUNCTION synapse_compress.exclude_room(text) IS
'Leave a room out of every scheduled run (the worker and compress_database) until include_room(); compress_room still compresses it when asked. 42704 for an unknown room.';
COMMENT ON FUNCTION synapse_compress.include_room(text) IS
'Undo exclude_room(): scheduled runs compress the room again. 42704 for an unknown room.';
COMMENT ON FUNCTION synapse_compress.set_room_priority(text, integer) IS
'Scheduled runs take rooms with a higher priority first (default 0; negative: after the others), then the most uncompressed rows. 42704 for an unknown room.';
COMMENT ON FUNCTION synapse_compress.set_room_levels(text, text) IS
'The levels scheduled runs compress a room with (e.g. ''100,50,25''; 22023 if malformed); NULL: back to synapse_compress.levels. '
'A room already compressed with other levels continues with a fresh tree from its progress. 42704 for an unknown room.';
COMMENT ON TABLE synapse_compress.room_settings IS
'Per room: excluded from scheduled runs, priority, own levels. Set with exclude_room, include_room, set_room_priority, set_room_levels.';

-- N. Re-compression of what Synapse de-deltas, and of groups that commit late.
-- Re-compression (README, "Keeping rooms compressed"; src/schedule.rs, `revisit`): what
-- each scheduled run's start remembers to find groups below a room's progress that
-- Synapse de-deltaed, or that committed after a run had passed them.
ALTER TABLE synapse_compress.control
    -- state_groups' deleted-tuple counter when the last scan for de-deltaed groups ran
    -- (NULL: never; the first scan records the snapshots it finds as a baseline).
    ADD COLUMN groups_deleted_seen bigint,
    -- The snapshot, time and newest group of the run start the floor will move up
    -- to once settled, and the ids above the floor that were missing at the last
    -- start (in flight or rolled back): found later, they committed late.
    ADD COLUMN late_snapshot pg_snapshot,
    ADD COLUMN late_at timestamptz,
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
