-- A room shaped like the existing tool's headline room, at 2% scale: rows drop far.
-- data: --preset headline --scale 0.02 --seed 1
CALL sc_test.snapshot();
SET synapse_compress.progress_interval = 0;
CREATE TEMP TABLE r AS SELECT c.* FROM (SELECT DISTINCT room_id FROM state_groups) x, LATERAL compress_room(x.room_id) c;
SELECT * FROM r;
SELECT sc_test.check(rows_after * 2 < rows_before AND written, 'more than half the rows removed') FROM r;
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
