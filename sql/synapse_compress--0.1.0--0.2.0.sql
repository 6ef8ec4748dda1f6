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
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass
        FROM pg_catalog.pg_depend d
        JOIN pg_catalog.pg_class c ON c.oid = d.objid
        JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
        WHERE e.extname = 'synapse_compress' AND d.deptype = 'e'
          AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
          AND c.relname IN ('state_compressor_state', 'state_compressor_progress',
                            'state_compressor_total_progress')
    LOOP
        EXECUTE pg_catalog.format('ALTER EXTENSION synapse_compress DROP TABLE %s', t);
    END LOOP;
END $$;
