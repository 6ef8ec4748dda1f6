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
