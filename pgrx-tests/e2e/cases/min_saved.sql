-- min_saved_rows: below it nothing is written and the summary says so.
-- data: --preset headline --scale 0.01 --seed 7
SELECT sc_test.raw_digest() AS raw0 \gset
SELECT room_id AS room FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1 \gset
SELECT sc_test.check(NOT written AND rows_after < rows_before, 'below the minimum: not written')
  FROM compress_room(:'room', min_saved_rows => 1000000000);
SELECT sc_test.check(sc_test.raw_digest() = :'raw0', 'nothing written');
SELECT rows_before - rows_after AS saved FROM compress_room(:'room', dry_run => true) \gset
SELECT sc_test.check(written, 'exactly the minimum is written') FROM compress_room(:'room', min_saved_rows => :saved);
SELECT sc_test.check(sc_test.raw_digest() <> :'raw0', 'written');
