-- Hostile strings everywhere (room id, types, state keys, event ids), in a room
-- written the way Synapse writes rooms (a snapshot every 100 groups): harmless, state
-- preserved, rows removed.
DO $$
DECLARE
  room text := E'!\'); DROP TABLE state_groups; --\t\\x\n';
  first bigint := nextval('state_group_id_seq');
  id bigint;
BEGIN
  CREATE TEMP TABLE cur (type text, state_key text, event_id text, PRIMARY KEY (type, state_key));
  INSERT INTO cur VALUES ('m.room.create', '', E'$c\'"\\'), (E'x\ty', E'a\nb', E'$t\r'),
                         ('m.room.member', E'@\\u0000:é🚀', '$m'), (E'\\.', E'\\N', '$n');
  FOR g IN 0..999 LOOP
    id := first + g;
    INSERT INTO state_groups VALUES (id, room, '$e' || g);
    IF g > 0 THEN
      INSERT INTO cur VALUES ('m.room.member', '@u' || (g % 300) || E':h\'s', E'$m\'' || g)
        ON CONFLICT (type, state_key) DO UPDATE SET event_id = excluded.event_id;
    END IF;
    IF g % 100 = 0 THEN
      INSERT INTO state_groups_state SELECT id, room, type, state_key, event_id FROM cur;
    ELSE
      INSERT INTO state_group_edges VALUES (id, id - 1);
      INSERT INTO state_groups_state VALUES (id, room, 'm.room.member', '@u' || (g % 300) || E':h\'s', E'$m\'' || g);
    END IF;
  END LOOP;
  PERFORM setval('state_group_id_seq', first + 999);
END $$;
CALL sc_test.snapshot();
CREATE TEMP TABLE r AS SELECT * FROM compress_room(E'!\'); DROP TABLE state_groups; --\t\\x\n');
SELECT * FROM r;
SELECT sc_test.check(written AND rows_after < rows_before AND groups_skipped = 0, 'the hostile room is compressed') FROM r;
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
SELECT sc_test.check(count(*) = 1000, 'no group lost') FROM state_groups;
