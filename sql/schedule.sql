-- The schedule's bookkeeping: progress (the existing tool's tables, adopted as they
-- are), the room queue, run history, the views admins read and the functions they call.

-- synapse_auto_compressor's tables (state_compressor_state, _progress, _total_progress)
-- are not created here: they are created on first use, where and as the tool creates
-- them (in the state tables' schema, owned by Synapse's role), and are never members
-- of the extension. An admin switching from the tool keeps its progress; DROP
-- EXTENSION leaves them, so the tool, or a reinstall, continues where we stopped.

-- One row: the switches admins flip and the watermark of the incremental room counts.
CREATE TABLE synapse_compress.control (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    paused boolean NOT NULL DEFAULT false,
    wake_requested_at timestamptz,
    scanned_upto bigint NOT NULL DEFAULT 0,
    rows_saved bigint NOT NULL DEFAULT 0,
    -- Where Synapse's state tables are (set_state_schema() changes it).
    state_schema text NOT NULL DEFAULT 'public'
);
-- The schema holding state_groups_state now, preferring the extension's own; else
-- public (Synapse may create its tables after us).
INSERT INTO synapse_compress.control (state_schema)
SELECT coalesce((SELECT n.nspname FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname = 'state_groups_state' AND c.relkind IN ('r', 'p')
                 ORDER BY n.nspname = '@extschema@' DESC, n.nspname LIMIT 1),
                'public');

-- Per room: what is left to compress (kept up to date incrementally), what was saved,
-- and the last error with its backoff.
CREATE TABLE synapse_compress.room_queue (
    room_id text PRIMARY KEY,
    pending_groups bigint NOT NULL DEFAULT 0,
    pending_rows bigint NOT NULL DEFAULT 0,
    rows_saved bigint NOT NULL DEFAULT 0,
    chunks_written bigint NOT NULL DEFAULT 0,
    chunks_not_saved bigint NOT NULL DEFAULT 0,
    groups_skipped bigint NOT NULL DEFAULT 0,
    last_chunk_at timestamptz,
    last_error text,
    last_error_at timestamptz,
    error_count int NOT NULL DEFAULT 0,
    next_retry timestamptz
);
-- The orders scheduled runs take rooms in: the most rows first, and the rooms that fit
-- in what is left of a batch, largest first (src/schedule.rs, `candidates_sql`).
CREATE INDEX room_queue_pending ON synapse_compress.room_queue (pending_rows DESC, room_id)
    WHERE pending_groups > 0;
CREATE INDEX room_queue_fill ON synapse_compress.room_queue (pending_groups DESC, room_id)
    WHERE pending_groups > 0;

CREATE TABLE synapse_compress.runs (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text NOT NULL CHECK (source IN ('worker', 'procedure')),
    pid int NOT NULL DEFAULT pg_backend_pid(),
    backend_start timestamptz,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome text NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'done', 'budget', 'paused', 'stopped', 'crashed', 'failed', 'window')),
    upto bigint NOT NULL,
    chunk_size int NOT NULL,
    current_room text,
    current_group bigint,
    rooms int NOT NULL DEFAULT 0,
    chunks int NOT NULL DEFAULT 0,
    chunks_not_saved int NOT NULL DEFAULT 0,
    groups bigint NOT NULL DEFAULT 0,
    groups_changed bigint NOT NULL DEFAULT 0,
    rows_before bigint NOT NULL DEFAULT 0,
    rows_after bigint NOT NULL DEFAULT 0,
    errors int NOT NULL DEFAULT 0,
    message text,
    -- Rooms with work that room_settings excluded when the run started.
    rooms_excluded int NOT NULL DEFAULT 0
);

-- Per room, set by exclude_room/include_room/set_room_priority/set_room_levels:
-- honoured by every scheduled run (not by compress_room, an explicit request).
CREATE TABLE synapse_compress.room_settings (
    room_id text PRIMARY KEY,
    excluded boolean NOT NULL DEFAULT false,
    priority int NOT NULL DEFAULT 0,
    -- NULL: synapse_compress.levels; else validated by set_room_levels.
    levels text
);

-- pg_dump keeps the bookkeeping (the tool's tables are dumped as ordinary tables
-- unless we created them, in which case they are ours too).
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.control', '');
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.room_queue', '');
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.runs', '');
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.room_settings', '');

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

-- When a scheduled run may start at or after `at`: `at` if synapse_compress.window is
-- open then, else the window's next opening (times of day in the session's time zone,
-- which is the server's unless the client set another; the worker uses the server's).
CREATE FUNCTION synapse_compress.window_start(at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE x.wait WHEN 0 THEN at ELSE date_trunc('minute', at) + make_interval(mins => x.wait) END
    FROM (SELECT synapse_compress.window_wait((extract(hour FROM at) * 60 + extract(minute FROM at))::int) AS wait) x
$$;

CREATE VIEW synapse_compress.status AS
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

CREATE FUNCTION synapse_compress.pause() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE synapse_compress.control SET paused = true;
$$;

CREATE FUNCTION synapse_compress.resume() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE synapse_compress.control SET paused = false, wake_requested_at = now();
    PERFORM synapse_compress.wake_workers();
END $$;

CREATE FUNCTION synapse_compress.run_now() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE woken integer;
BEGIN
    UPDATE synapse_compress.control SET wake_requested_at = now();
    woken := synapse_compress.wake_workers();
    IF woken = 0 THEN
        RAISE NOTICE 'no synapse_compress worker is running; the request stays until one starts'
            USING HINT = 'Add synapse_compress to shared_preload_libraries (see the README), or run CALL compress_database() now.';
    END IF;
    RETURN woken;
END $$;

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
CREATE PROCEDURE compress_database(time_budget interval DEFAULT NULL, max_chunks integer DEFAULT NULL)
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
