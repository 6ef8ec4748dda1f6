-- A run's start counts each room's new groups and their state rows into the queue,
-- above the progress the existing tool (or an earlier run) saved: a room compressed
-- partway counts only its groups above it, a room done counts nothing.
-- data: --preset manyrooms --scale 0.01 --seed 62
CREATE TABLE state_compressor_state (room_id TEXT NOT NULL, level_num INT NOT NULL,
    max_size INT NOT NULL, current_length INT NOT NULL, current_head BIGINT,
    UNIQUE (room_id, level_num));
CREATE TABLE state_compressor_progress (room_id TEXT PRIMARY KEY, last_compressed BIGINT NOT NULL);
CREATE TABLE state_compressor_total_progress (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,
    lowest_uncompressed_group BIGINT NOT NULL, CHECK (Lock='X'));
INSERT INTO state_compressor_total_progress (lowest_uncompressed_group) VALUES (0);
SELECT room_id AS partway FROM state_groups GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1 \gset
SELECT room_id AS done FROM state_groups GROUP BY 1 ORDER BY count(*) DESC, 1 OFFSET 1 LIMIT 1 \gset
-- The existing tool stopped at the partway room's 10th group and finished the other.
INSERT INTO state_compressor_progress
  SELECT :'partway', id FROM state_groups WHERE room_id = :'partway' ORDER BY id OFFSET 9 LIMIT 1;
INSERT INTO state_compressor_progress SELECT :'done', max(id) FROM state_groups WHERE room_id = :'done';
INSERT INTO state_compressor_state VALUES (:'partway', 1, 100, 0, NULL), (:'done', 1, 100, 0, NULL);

SELECT synapse_compress.begin_run('procedure') AS run \gset
SELECT sc_test.check(count(*) >= 10 AND count(*) FILTER (WHERE e.groups > 0) = count(*) - 1
                     AND bool_and(coalesce(q.pending_groups, 0) = e.groups
                                  AND coalesce(q.pending_rows, 0) = e.rows),
                     'the queue holds each room''s groups and rows above its progress')
  FROM (SELECT g.room_id, count(*) FILTER (WHERE g.id > coalesce(p.last_compressed, 0)) AS groups,
               coalesce(sum(s.n) FILTER (WHERE g.id > coalesce(p.last_compressed, 0)), 0) AS rows
          FROM state_groups g
          LEFT JOIN state_compressor_progress p USING (room_id)
          LEFT JOIN (SELECT state_group, count(*) AS n FROM state_groups_state GROUP BY 1) s
                 ON s.state_group = g.id
         GROUP BY 1) e
  LEFT JOIN synapse_compress.room_queue q USING (room_id);
SELECT sc_test.check(q.pending_groups = (SELECT count(*) - 10 FROM state_groups WHERE room_id = :'partway'),
                     'the partway room counts its groups past the 10th')
  FROM synapse_compress.room_queue q WHERE q.room_id = :'partway';
SELECT synapse_compress.end_run(:run, 'done', NULL);
