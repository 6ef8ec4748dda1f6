-- Runs last in CREATE EXTENSION: privileges and documentation.

-- Rewriting state is for superusers and roles an admin grants it to.
REVOKE EXECUTE ON FUNCTION compress_room(text, text, boolean, bigint, bigint, bigint) FROM PUBLIC;

COMMENT ON FUNCTION compress_room(text, text, boolean, bigint, bigint, bigint) IS
'Compress one room''s state groups in the current transaction, like synapse_auto_compressor but verified: '
'every rewritten group keeps exactly its resolved state (checked before anything is written, and read back after). '
'Arguments: room_id; levels (comma-separated chain lengths, finest first, default ''100,50,25''); '
'dry_run (plan and report only); min_saved_rows (write nothing unless at least this many rows go); '
'after_group / max_groups (bound the range of group ids). '
'Writes nothing when the result would not remove rows. Memory per chunk: SET synapse_compress.chunk_size. '
'Returns one row: room_id, state_groups, groups_changed, groups_skipped, rows_before, rows_after, '
'forced_snapshots, max_chain_after, dry_run, written, elapsed_ms.';

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

-- Scheduled compression: everything that rewrites or changes the schedule is for
-- superusers and roles an admin grants it to (see the README for the worker's role).
REVOKE EXECUTE ON PROCEDURE compress_database(interval, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.begin_run(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.run_step(bigint, interval, integer, interval, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.end_run(bigint, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.wake_workers() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.pause() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.resume() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.run_now() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.reset_room(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION synapse_compress.set_state_schema(text) FROM PUBLIC;

COMMENT ON SCHEMA synapse_compress IS
'synapse_compress scheduling: status and rooms views, run history, pause/resume/run_now/reset_room.';
COMMENT ON PROCEDURE compress_database(interval, integer) IS
'One scheduled run in the foreground: compresses the rooms with the most uncompressed rows first, '
'one chunk (synapse_compress.chunk_size groups, of one room or of several small ones) per transaction, committing the chunk with the room''s saved levels '
'and progress (state_compressor_progress / state_compressor_state, shared with synapse_auto_compressor). '
'Stops when no work is left, after time_budget, or after max_chunks chunks; the next run continues. '
'A room that fails is recorded in synapse_compress.rooms and retried later. Must be CALLed outside a transaction block.';
COMMENT ON FUNCTION synapse_compress.worker_registered() IS
'True when this server registered the background worker (synapse_compress in shared_preload_libraries and synapse_compress.workers > 0).';
COMMENT ON FUNCTION synapse_compress.window_wait(integer) IS
'Minutes from a minute of the day (0-1439) until synapse_compress.window is open: 0 inside it or when it is empty. Used by window_start().';
COMMENT ON FUNCTION synapse_compress.window_start(timestamptz) IS
'When a scheduled run may start at or after the given time: that time if synapse_compress.window is open then, else the window''s next opening. Used by the status view''s next_run.';
COMMENT ON FUNCTION synapse_compress.wake_workers() IS
'Set the latch of every running synapse_compress worker; returns how many were woken. Used by run_now() and resume().';
COMMENT ON FUNCTION synapse_compress.begin_run(text) IS
'Internal (CALL compress_database() uses it): start a run: close dead runs, prune history, count new groups per room.';
COMMENT ON FUNCTION synapse_compress.run_step(bigint, interval, integer, interval, integer) IS
'Internal (CALL compress_database() uses it; the worker runs the same code): one step of a run: the run policy at this chunk boundary, then the next chunk, or a batch of small rooms holding no more than synapse_compress.chunk_size groups together (chunks_done). run_end says how the run ends (NULL: go on after pause_ms).';
COMMENT ON FUNCTION synapse_compress.end_run(bigint, text, text) IS
'Internal (CALL compress_database() uses it): record how a run ended.';
COMMENT ON FUNCTION synapse_compress.pause() IS
'Pause the background worker at its next chunk boundary; persists across restarts until resume().';
COMMENT ON FUNCTION synapse_compress.resume() IS
'Undo pause() and wake the worker to run now.';
COMMENT ON FUNCTION synapse_compress.run_now() IS
'Ask the background worker to start a run now (not waiting for synapse_compress.interval); returns the number of workers woken.';
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
COMMENT ON TABLE synapse_compress.control IS
'One row: paused (pause()/resume()), the last run_now() request, the watermark of the incremental room counts, rows saved in all.';
COMMENT ON TABLE synapse_compress.room_queue IS
'Per room: groups and rows not yet compressed (kept up to date from new groups only), rows saved, last error and next retry.';
COMMENT ON TABLE synapse_compress.runs IS
'History of scheduled runs (worker and compress_database), kept for synapse_compress.history_days days.';
COMMENT ON VIEW synapse_compress.status IS
'One row: is the worker registered and running, enabled, paused; the current run, room and group; the last run and its outcome; the next run; totals; '
'bytes_saved_estimate (rows_saved_total times state_groups_state''s bytes per row now, table and indexes: see the space view), '
'the state tables'' size and state_groups_state''s dead tuples, what VACUUM would make reusable and VACUUM FULL / pg_repack give back (sums of the space view); '
'run_percent_done (groups the current run did, of those plus the groups still pending) and run_eta (at the run''s rate so far).';
COMMENT ON VIEW synapse_compress.rooms IS
'Per room: state groups, compressed up to (state_compressor_progress), saved levels (length/size, finest first), '
'pending groups and rows, rows saved, chunks written and undone, last error, next retry; '
'bytes_saved_estimate (rows_saved times state_groups_state''s bytes per row now: see the space view); '
'its room_settings: excluded, priority, levels_setting (NULL: synapse_compress.levels).';
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
-- The tool's tables get no COMMENT: when adopted they are not ours to annotate.
