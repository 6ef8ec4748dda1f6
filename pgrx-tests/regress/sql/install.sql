-- The extension installs in a database without Synapse's tables; compress_room checks
-- its input before it reads any; without shared_preload_libraries no worker runs; and
-- no function that rewrites Synapse's tables is PUBLIC's to call.
-- (These were #[pg_test]s: a build of their own for three queries.)
\set VERBOSITY default
CREATE DATABASE sc_regress_bare;
\c sc_regress_bare
CREATE EXTENSION synapse_compress;
SELECT * FROM compress_room('!x:hs', levels => '0');
\echo SQLSTATE :SQLSTATE
SELECT * FROM compress_room('!x:hs');
\echo SQLSTATE :SQLSTATE
SELECT worker_registered, workers_running FROM synapse_compress.status;
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('public', 'synapse_compress')
   AND p.proname IN ('compress_room', 'compress_database', 'run_step', 'reset_room',
                     'set_state_schema', 'begin_run', 'end_run')
   AND has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;
SELECT count(*) > 0 AS rewriting_functions_exist FROM pg_proc
 WHERE proname IN ('compress_room', 'compress_database', 'run_step', 'reset_room');
\c postgres
DROP DATABASE sc_regress_bare;
