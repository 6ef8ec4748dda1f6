-- Every shape of room (linear, forks, backfilled roots, interleaved ids, v12 room
-- ids): a dry run writes nothing and predicts the real run; the real run keeps every
-- group's resolved state, builds a well-formed tree and removes rows.
-- data: --preset small --scale 5 --seed 11
-- data: --preset headline --scale 0.01 --seed 2 --first-id 10000
CALL sc_test.snapshot();
SELECT sc_test.raw_digest() AS raw0 \gset
CREATE TEMP TABLE dry AS SELECT * FROM sc_test.compress_all(dry => true);
SELECT sc_test.check(sc_test.raw_digest() = :'raw0', 'dry run wrote nothing');
SELECT sc_test.check(bool_and(NOT written AND dry_run), 'dry run reports written = false') FROM dry;

CREATE TEMP TABLE real AS SELECT * FROM sc_test.compress_all();
SELECT room_id, state_groups, groups_changed, rows_before, rows_after, forced_snapshots, max_chain_after, written FROM real ORDER BY room_id;
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
SELECT sc_test.check(sum(CASE WHEN written THEN rows_after ELSE rows_before END) < sum(rows_before), 'rows removed') FROM real;
SELECT sc_test.check(bool_and(rows_after < rows_before), 'no room written grows') FROM real WHERE written;
SELECT sc_test.check(sc_test.rows_total() = (SELECT sum(CASE WHEN written THEN rows_after ELSE rows_before END) FROM real),
                     'summary rows match the table');
SELECT sc_test.check(bool_and(d.rows_after = r.rows_after AND d.groups_changed = r.groups_changed), 'dry run predicted the real run')
FROM dry d JOIN real r USING (room_id) WHERE r.written;
SELECT sc_test.check(count(*) >= 3, 'several rooms compressed') FROM real WHERE written;

-- A second run finds nothing more to do and writes nothing.
SELECT sc_test.raw_digest() AS raw1 \gset
CREATE TEMP TABLE again AS SELECT * FROM sc_test.compress_all();
SELECT sc_test.check(sc_test.raw_digest() = :'raw1', 'second run wrote nothing');
CALL sc_test.assert_same_state();
