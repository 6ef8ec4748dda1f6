-- What was won: status and rooms show rows and bytes saved, the state tables' size and
-- dead tuples, VACUUM estimates, and the current run's percent done and ETA; the
-- metrics view has stable names and sane values, and pg_monitor can read it without
-- any privilege on Synapse's tables.
-- data: --preset manyrooms --scale 0.01 --seed 51
-- data: --preset headline --scale 0.01 --seed 52 --first-id 700000
SET synapse_compress.chunk_pause = 0;
SET synapse_compress.chunk_size = 200;
-- Before any run: sizes are there, nothing saved, no run.
SELECT sc_test.check(state_tables_bytes = (SELECT sum(pg_total_relation_size(c))
                                           FROM unnest(ARRAY['state_groups_state', 'state_group_edges',
                                                             'state_groups']::regclass[]) c)
                     AND bytes_saved_estimate = 0 AND run_percent_done IS NULL AND run_eta IS NULL,
                     'status before a run') FROM synapse_compress.status;
SELECT sc_test.check(count(*) = 3 AND bool_and(total_bytes >= heap_bytes AND heap_bytes > 0
                                               AND live_tuples > 0 AND row_bytes > 0),
                     'space: the three state tables') FROM synapse_compress.space;

-- A run in progress, chunk by chunk: percent done is the groups done of done + pending.
SELECT synapse_compress.begin_run('procedure') AS run \gset
SELECT outcome FROM synapse_compress.run_step(:run);
SELECT outcome FROM synapse_compress.run_step(:run);
SELECT sc_test.check(s.current_run = :run AND s.run_percent_done > 0 AND s.run_percent_done < 100
                     AND s.run_percent_done = round(100.0 * r.groups / (r.groups + p.pending), 1)
                     AND s.run_eta >= now(), 'percent done and ETA of the current run')
  FROM synapse_compress.status s, synapse_compress.runs r,
       (SELECT sum(pending_groups) pending FROM synapse_compress.room_queue) p
 WHERE r.run_id = :run;
SELECT synapse_compress.end_run(:run, 'stopped', NULL);
CALL compress_database();

-- After it: rows saved, and bytes at the state row's size.
SELECT pg_stat_force_next_flush();
SELECT sc_test.check(s.rows_saved_total > 0 AND s.rooms_pending = 0 AND s.run_percent_done IS NULL
                     AND s.bytes_saved_estimate = round(s.rows_saved_total * x.row_bytes)
                     AND s.state_dead_tuples = x.dead_tuples,
                     'status after the run')
  FROM synapse_compress.status s, synapse_compress.space x WHERE x.table_name = 'state_groups_state';
SELECT sc_test.check(sum(rows_saved) = (SELECT rows_saved_total FROM synapse_compress.status)
                     AND bool_and(bytes_saved_estimate = round(rows_saved * x.row_bytes)),
                     'rooms: rows and bytes saved per room')
  FROM synapse_compress.rooms, synapse_compress.space x WHERE x.table_name = 'state_groups_state';
-- The rows removed are dead until VACUUM (autovacuum may have been quicker).
SELECT sc_test.check(dead_tuples > 0 AND vacuum_reusable_bytes_estimate > 0
                     OR pg_stat_get_autovacuum_count('state_groups_state'::regclass) > 0,
                     'dead tuples after the run') FROM synapse_compress.space
 WHERE table_name = 'state_groups_state';
SELECT sc_test.check(vacuum_full_returnable_bytes_estimate >= 0 AND vacuum_full_returnable_bytes_estimate <= total_bytes,
                     'the VACUUM FULL estimate is within the table') FROM synapse_compress.space;
VACUUM state_groups_state;
SELECT pg_stat_force_next_flush();
SELECT sc_test.check(dead_tuples = 0 AND vacuum_reusable_bytes_estimate = 0, 'VACUUM cleaned the dead tuples')
  FROM synapse_compress.space WHERE table_name = 'state_groups_state';

-- Metrics: the names are stable, the values agree with status.
SELECT metric, type FROM synapse_compress.metrics ORDER BY metric;
SELECT sc_test.check(array_agg(metric ORDER BY metric) = ARRAY[
    'synapse_compress_bytes_saved_estimate', 'synapse_compress_last_run_duration_seconds',
    'synapse_compress_last_run_errors', 'synapse_compress_last_run_finished_timestamp_seconds',
    'synapse_compress_paused', 'synapse_compress_rooms_failing', 'synapse_compress_rooms_pending',
    'synapse_compress_rows_pending', 'synapse_compress_rows_saved_total', 'synapse_compress_run_eta_timestamp_seconds',
    'synapse_compress_run_percent_done', 'synapse_compress_run_running', 'synapse_compress_state_dead_tuples',
    'synapse_compress_state_tables_bytes', 'synapse_compress_vacuum_full_returnable_bytes_estimate',
    'synapse_compress_vacuum_reusable_bytes_estimate', 'synapse_compress_workers_running']
    AND bool_and(metric ~ '^synapse_compress_[a-z_]+$' AND help <> '' AND type IN ('counter', 'gauge')),
    'metric names') FROM synapse_compress.metrics;
CREATE TEMP TABLE m AS SELECT metric, value FROM synapse_compress.metrics;
SELECT sc_test.check(
    (SELECT value FROM m WHERE metric = 'synapse_compress_rows_saved_total') = s.rows_saved_total
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_state_tables_bytes') = s.state_tables_bytes
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_rooms_pending') = 0
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_run_running') = 0
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_run_percent_done') = 'NaN'
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_last_run_duration_seconds') >= 0
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_last_run_errors') = 0
    AND (SELECT value FROM m WHERE metric = 'synapse_compress_last_run_finished_timestamp_seconds')
        BETWEEN extract(epoch FROM now()) - 3600 AND extract(epoch FROM clock_timestamp()),
    'metric values') FROM synapse_compress.status s;

-- pg_monitor reads the metrics and space views with no privilege on Synapse's tables.
DROP ROLE IF EXISTS sc_e2e_monitor;
CREATE ROLE sc_e2e_monitor IN ROLE pg_monitor;
SET ROLE sc_e2e_monitor;
SELECT has_table_privilege('state_groups_state', 'SELECT') AS monitor_reads_state \gset
SELECT count(*) = 17 AND count(*) FILTER (WHERE metric = 'synapse_compress_rows_saved_total'
                                          AND value > 0) = 1 AS monitor_metrics
  FROM synapse_compress.metrics \gset
SELECT count(*) = 3 AS monitor_space FROM synapse_compress.space \gset
RESET ROLE;
DROP ROLE sc_e2e_monitor;
SELECT sc_test.check(NOT :'monitor_reads_state'::boolean, 'the monitoring role cannot read state');
SELECT sc_test.check(:'monitor_metrics'::boolean, 'pg_monitor reads the metrics');
SELECT sc_test.check(:'monitor_space'::boolean, 'pg_monitor reads space');
