-- Hostile strings everywhere (room id, types, state keys, event ids) and a room id
-- without :server (room version 12): harmless, state preserved.
SELECT nextval('state_group_id_seq') AS first \gset
INSERT INTO state_groups (id, room_id, event_id)
  SELECT :first + g, E'!\'); DROP TABLE state_groups; --\t\\x', '$e' || g FROM generate_series(0, 399) g;
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT :first, E'!\'); DROP TABLE state_groups; --\t\\x', t, k, E'$ev\'"\\' || t || k
  FROM (VALUES ('m.room.create', ''), (E'x\ty', E'a\nb'), ('m.room.member', E'@\\u0000:é🚀'), ('m.room.topic', '')) v(t, k);
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT :first + g, E'!\'); DROP TABLE state_groups; --\t\\x', 'm.room.member', E'@u' || (g % 50) || E':h\'s', '$m' || g
  FROM generate_series(1, 399) g;
INSERT INTO state_group_edges SELECT :first + g, :first + g - 1 FROM generate_series(1, 399) g WHERE g % 100 <> 0;
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT DISTINCT ON (s.g, x.type, x.state_key) s.g, x.room_id, x.type, x.state_key, x.event_id
  FROM (SELECT :first + g AS g FROM generate_series(100, 399, 100) g) s
  JOIN state_groups_state x ON x.state_group BETWEEN :first AND s.g - 1
  ORDER BY s.g, x.type, x.state_key, x.state_group DESC;
-- Room version 12 ids have no server part.
INSERT INTO state_groups (id, room_id, event_id) SELECT :first + 400 + g, '!v12roomwithoutserver', '$v' || g FROM generate_series(0, 249) g;
INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
  SELECT :first + 400 + g, '!v12roomwithoutserver', 'm.room.member', '@a' || g || ':x', '$v' || g FROM generate_series(0, 249) g;
INSERT INTO state_group_edges SELECT :first + 400 + g, :first + 399 + g FROM generate_series(1, 249) g;
SELECT setval('state_group_id_seq', :first + 650);
CALL sc_test.snapshot();
SELECT * FROM compress_room(E'!\'); DROP TABLE state_groups; --\t\\x');
SELECT * FROM compress_room('!v12roomwithoutserver');
CALL sc_test.assert_same_state();
CALL sc_test.assert_tree(175);
SELECT sc_test.check(count(*) = 650, 'no group lost') FROM state_groups;
