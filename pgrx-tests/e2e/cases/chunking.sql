-- Chunked and unchunked: whatever synapse_compress.chunk_size, every state is kept, and
-- the trees differ only where the planner's recent choice (a snapshot group's base
-- among the last groups of its slice) saw fewer groups: within 5% of the rows. (Without
-- the recent choice the trees are the same: core/tests/properties.rs.)
-- data: --preset small --scale 5 --seed 5
CALL sc_test.snapshot();
BEGIN;
SET LOCAL synapse_compress.chunk_size = 7;
SELECT count(*) FROM sc_test.compress_all();
SELECT sc_test.rows_total() AS rows7 \gset
CALL sc_test.assert_same_state();
ROLLBACK;
BEGIN;
SET LOCAL synapse_compress.chunk_size = 100000;
SELECT count(*) FROM sc_test.compress_all();
SELECT sc_test.rows_total() AS rows_whole \gset
SELECT sc_test.check(:rows7 <= :rows_whole * 1.05 AND :rows_whole <= :rows7 * 1.05,
                     format('chunk size 7 and 100000 within 5%% of each other''s rows (%s, %s)', :rows7, :rows_whole));
COMMIT;
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
