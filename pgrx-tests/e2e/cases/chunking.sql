-- Chunked equals unchunked: the same tree whatever synapse_compress.chunk_size.
-- data: --preset small --scale 5 --seed 5
CALL sc_test.snapshot();
BEGIN;
SET LOCAL synapse_compress.chunk_size = 7;
SELECT count(*) FROM sc_test.compress_all();
SELECT sc_test.raw_digest() AS d7 \gset
ROLLBACK;
BEGIN;
SET LOCAL synapse_compress.chunk_size = 100000;
SELECT count(*) FROM sc_test.compress_all();
SELECT sc_test.check(sc_test.raw_digest() = :'d7', 'chunk size 7 and 100000 give the same tables');
COMMIT;
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
