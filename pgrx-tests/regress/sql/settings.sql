-- Settings that catch typos: once the library is loaded, the synapse_compress.
-- prefix is reserved (MarkGUCPrefixReserved), so a misspelled name is an ERROR
-- instead of a placeholder that silently does nothing; and synapse_compress.window
-- refuses a malformed window where it is set.
\set VERBOSITY default
\set SHOW_CONTEXT never
-- Before the library is loaded, PostgreSQL keeps any name as a placeholder; loading
-- the library removes the misspelled one, with a WARNING.
SET synapse_compress.chunk_sise = 10;
LOAD 'synapse_compress';
SHOW synapse_compress.chunk_sise;
\echo SQLSTATE :SQLSTATE
-- Loaded: a misspelled name is an error, the real one works.
SET synapse_compress.chunk_sise = 10;
\echo SQLSTATE :SQLSTATE
SET synapse_compress.chunk_size = 10;
SHOW synapse_compress.chunk_size;
RESET synapse_compress.chunk_size;
-- Loaded by calling a function (a new session): the same.
\c
SELECT synapse_compress.worker_registered();
SET synapse_compress.chunk_sise = 10;
\echo SQLSTATE :SQLSTATE
SELECT set_config('synapse_compress.levls', '10,5', false);
\echo SQLSTATE :SQLSTATE
-- The window: empty (always) by default; like the worker's schedule, it is set in
-- postgresql.conf (or ALTER SYSTEM), not per session. WINDOW is an SQL keyword: in SQL
-- commands the name is written quoted.
SHOW synapse_compress.window;
SHOW synapse_compress."window";
SELECT current_setting('synapse_compress.window') = '' AS always;
SET synapse_compress."window" = '01:00-06:00';
\echo SQLSTATE :SQLSTATE
-- Malformed windows are refused, with what is wrong and how to write one.
ALTER SYSTEM SET synapse_compress."window" = '25:00-06:00';
\echo SQLSTATE :SQLSTATE
ALTER SYSTEM SET synapse_compress."window" = '06:00-06:00';
\echo SQLSTATE :SQLSTATE
ALTER SYSTEM SET synapse_compress."window" = '1am-6am';
\echo SQLSTATE :SQLSTATE
ALTER SYSTEM SET synapse_compress."window" = '01:00';
\echo SQLSTATE :SQLSTATE
-- Well-formed ones are taken, wrapping midnight too (and reset again).
ALTER SYSTEM SET synapse_compress."window" = '22:00-02:00';
ALTER SYSTEM SET synapse_compress."window" = '';
ALTER SYSTEM RESET synapse_compress."window";
-- When a scheduled run may start: with the window empty (always), any time is open.
SELECT synapse_compress.window_start('2026-01-01 03:30+00') = '2026-01-01 03:30+00' AS open;
SELECT synapse_compress.window_wait(0) AS wait, synapse_compress.window_wait(1439) AS wait_last;
SELECT synapse_compress.window_wait(1440);
\echo SQLSTATE :SQLSTATE
SELECT synapse_compress.window_wait(NULL);
\echo SQLSTATE :SQLSTATE
