-- The schedule's bookkeeping: progress (the existing tool's tables, adopted as they
-- are), the room queue, run history, the views admins read and the functions they call.

-- synapse_auto_compressor's tables, with its exact shapes: when they already exist (an
-- admin switching from it) they are adopted with their progress and level sizes; the
-- tool can still run after us, and we after it.
-- (Not CREATE TABLE IF NOT EXISTS: since PostgreSQL 15 an extension script may not
-- name an existing object it does not own that way.)
DO $$
BEGIN
    IF to_regclass('state_compressor_state') IS NULL THEN
        CREATE TABLE state_compressor_state (
            room_id TEXT NOT NULL,
            level_num INT NOT NULL,
            max_size INT NOT NULL,
            current_length INT NOT NULL,
            current_head BIGINT,
            UNIQUE (room_id, level_num)
        );
        PERFORM pg_catalog.pg_extension_config_dump('state_compressor_state', '');
    END IF;
    IF to_regclass('state_compressor_progress') IS NULL THEN
        CREATE TABLE state_compressor_progress (
            room_id TEXT PRIMARY KEY,
            last_compressed BIGINT NOT NULL
        );
        PERFORM pg_catalog.pg_extension_config_dump('state_compressor_progress', '');
    END IF;
    IF to_regclass('state_compressor_total_progress') IS NULL THEN
        CREATE TABLE state_compressor_total_progress (
            lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
            lowest_uncompressed_group BIGINT NOT NULL,
            CHECK (lock = 'X')
        );
        INSERT INTO state_compressor_total_progress (lowest_uncompressed_group) VALUES (0);
        PERFORM pg_catalog.pg_extension_config_dump('state_compressor_total_progress', '');
    END IF;
END $$;

-- One row: the switches admins flip and the watermark of the incremental room counts.
CREATE TABLE synapse_compress.control (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    paused boolean NOT NULL DEFAULT false,
    wake_requested_at timestamptz,
    scanned_upto bigint NOT NULL DEFAULT 0,
    rows_saved bigint NOT NULL DEFAULT 0
);
INSERT INTO synapse_compress.control DEFAULT VALUES;

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
CREATE INDEX room_queue_pending ON synapse_compress.room_queue (pending_rows DESC)
    WHERE pending_groups > 0;

CREATE TABLE synapse_compress.runs (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text NOT NULL CHECK (source IN ('worker', 'procedure')),
    pid int NOT NULL DEFAULT pg_backend_pid(),
    backend_start timestamptz,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome text NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'done', 'budget', 'paused', 'stopped', 'crashed', 'failed')),
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
    message text
);

-- pg_dump keeps the bookkeeping (the tool's tables are dumped as ordinary tables
-- unless we created them, in which case they are ours too).
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.control', '');
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.room_queue', '');
SELECT pg_catalog.pg_extension_config_dump('synapse_compress.runs', '');

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
    CASE WHEN c.paused OR NOT coalesce(current_setting('synapse_compress.enabled', true)::boolean, false)
              OR NOT synapse_compress.worker_registered() THEN NULL
         WHEN cur.run_id IS NOT NULL THEN cur.started_at
         WHEN c.wake_requested_at > coalesce(last.started_at, '-infinity') THEN c.wake_requested_at
         ELSE coalesce(last.finished_at, now())
              + make_interval(secs => (SELECT s.setting::int FROM pg_settings s
                                       WHERE s.name = 'synapse_compress.interval'))
    END AS next_run,
    c.rows_saved AS rows_saved_total,
    (SELECT count(*) FROM synapse_compress.room_queue q WHERE q.pending_groups > 0) AS rooms_pending,
    (SELECT coalesce(sum(q.pending_rows), 0) FROM synapse_compress.room_queue q) AS rows_pending,
    (SELECT count(*) FROM synapse_compress.room_queue q WHERE q.error_count > 0) AS rooms_failing
FROM synapse_compress.control c
LEFT JOIN LATERAL (SELECT * FROM synapse_compress.runs r WHERE r.outcome = 'running'
                   ORDER BY r.run_id DESC LIMIT 1) cur ON true
LEFT JOIN LATERAL (SELECT * FROM synapse_compress.runs r WHERE r.outcome <> 'running'
                   ORDER BY r.run_id DESC LIMIT 1) last ON true;

-- PL/pgSQL binds state_groups when called, not when the extension is created: the
-- extension installs before Synapse has created its tables (or in pgrx's test database).
CREATE FUNCTION synapse_compress.room_state_groups(room_id text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = @extschema@, pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT count(*) FROM state_groups g WHERE g.room_id = room_state_groups.room_id);
END $$;

CREATE VIEW synapse_compress.rooms AS
SELECT
    q.room_id,
    synapse_compress.room_state_groups(q.room_id) AS state_groups,
    p.last_compressed AS compressed_up_to,
    (SELECT string_agg(s.current_length || '/' || s.max_size, ',' ORDER BY s.level_num)
       FROM state_compressor_state s WHERE s.room_id = q.room_id) AS levels,
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
LEFT JOIN state_compressor_progress p USING (room_id);

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

-- The search_path is pinned: the state tables are looked up in the extension's schema,
-- never in a schema the caller controls.
CREATE FUNCTION synapse_compress.reset_room(room_id text) RETURNS void
LANGUAGE plpgsql SET search_path = @extschema@, pg_catalog, pg_temp AS $$
DECLARE
    known boolean;
BEGIN
    IF reset_room.room_id IS NULL THEN
        RAISE EXCEPTION 'room_id must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the room id, e.g. ''!abc:example.org''.';
    END IF;
    known := EXISTS (SELECT 1 FROM synapse_compress.room_queue q WHERE q.room_id = reset_room.room_id)
          OR EXISTS (SELECT 1 FROM state_compressor_progress p WHERE p.room_id = reset_room.room_id)
          OR EXISTS (SELECT 1 FROM state_groups g WHERE g.room_id = reset_room.room_id);
    IF NOT known THEN
        RAISE EXCEPTION 'room % has no state groups and no compression progress', quote_literal(reset_room.room_id)
            USING ERRCODE = 'undefined_object',
                  HINT = 'List rooms with: SELECT room_id FROM synapse_compress.rooms.';
    END IF;
    -- Waits for a chunk of this room in progress, then forgets the room's levels and
    -- errors: the next run starts it over from its first group with fresh levels.
    PERFORM pg_advisory_xact_lock(hashtext('synapse_compress'), hashtext(reset_room.room_id));
    DELETE FROM state_compressor_state s WHERE s.room_id = reset_room.room_id;
    DELETE FROM state_compressor_progress p WHERE p.room_id = reset_room.room_id;
    INSERT INTO synapse_compress.room_queue AS q (room_id, pending_groups, pending_rows)
    SELECT reset_room.room_id,
           (SELECT count(*) FROM state_groups g WHERE g.room_id = reset_room.room_id),
           (SELECT count(*) FROM state_groups_state s WHERE s.room_id = reset_room.room_id)
    ON CONFLICT ON CONSTRAINT room_queue_pkey DO UPDATE
        SET pending_groups = excluded.pending_groups, pending_rows = excluded.pending_rows,
            last_error = NULL, last_error_at = NULL, error_count = 0, next_retry = NULL;
END $$;

-- One scheduled run in the foreground, committing after every chunk: for servers that
-- cannot preload the library, or to compress now under the admin's eye.
-- (No SET search_path: a procedure with SET clauses may not COMMIT. Every name in it
-- is schema-qualified or in pg_catalog.)
CREATE PROCEDURE compress_database(time_budget interval DEFAULT NULL, max_chunks integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    run bigint;
    r record;
    started timestamptz := clock_timestamp();
    chunks integer := 0;
    outcome text := 'done';
    pause_ms integer;
BEGIN
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
    LOOP
        IF max_chunks IS NOT NULL AND chunks >= max_chunks
           OR time_budget IS NOT NULL AND clock_timestamp() - started >= time_budget THEN
            outcome := 'budget';
            EXIT;
        END IF;
        r := synapse_compress.run_chunk(run);
        COMMIT;
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
    SELECT * INTO r FROM synapse_compress.runs WHERE run_id = run;
    RAISE NOTICE 'compress_database: % chunks in % rooms, % groups, rows % -> %, % errors (run %, %)',
        r.chunks, r.rooms, r.groups, r.rows_before, r.rows_after, r.errors, run, outcome;
END $$;
