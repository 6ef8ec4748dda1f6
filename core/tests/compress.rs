//! Hand-built cases for the engine over the in-memory store.

mod common;
use common::*;

use synapse_compress_core::engine::{self, NotWritten};
use synapse_compress_core::{Error, GroupId};
use synapse_compress_testkit::memstore::MemStore;

#[test]
fn linear_room_shrinks_and_keeps_state() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 1000);
    let before = s.clone();
    let sum = compress(&mut s, "!a:hs", opts("100,50,25", 500));
    check_invariants(&before, &s, 175);
    assert!(sum.written, "{sum:?}");
    assert_eq!(sum.state_groups, 1000);
    assert_eq!(sum.rows_before as usize, total_rows(&before));
    assert_eq!(sum.rows_after as usize, total_rows(&s));
    assert!(sum.rows_after < sum.rows_before, "{sum:?}");
    assert!(sum.max_chain_after <= 175);
}

#[test]
fn dry_run_writes_nothing_and_predicts_the_real_run() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 700);
    let before = s.clone();
    let mut o = opts("100,50,25", 64);
    o.dry_run = true;
    let dry = compress(&mut s, "!a:hs", o);
    assert_eq!(s.tables, before.tables);
    assert_eq!(dry.not_written, Some(NotWritten::DryRun));
    let real = compress(&mut s, "!a:hs", opts("100,50,25", 64));
    assert_eq!(
        (dry.groups_changed, dry.rows_after, dry.max_chain_after),
        (real.groups_changed, real.rows_after, real.max_chain_after)
    );
}

#[test]
fn chunk_size_does_not_change_the_result() {
    let mut base = MemStore::default();
    linear_room(&mut base, "!a:hs", 1, 900);
    linear_room(&mut base, "!b:hs", 901, 300);
    let mut results = Vec::new();
    for chunk in [1, 7, 100, 500, 100_000] {
        let mut s = base.clone();
        compress(&mut s, "!a:hs", opts("100,50,25", chunk));
        check_invariants(&base, &s, 175);
        results.push(s.tables);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn unknown_room_and_room_without_groups_are_errors() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 10);
    let e =
        engine::compress_room(&mut s, "!nope:hs", opts("100", 10), 0, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::UnknownRoom(_)));
    s.tables.rooms.insert("!empty:hs".into());
    let e =
        engine::compress_room(&mut s, "!empty:hs", opts("100", 10), 0, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::NoStateGroups(_)));
}

#[test]
fn bad_arguments_are_rejected_before_anything_happens() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 10);
    let before = s.clone();
    let run = |s: &mut MemStore, o, min| engine::compress_room(s, "!a:hs", o, min, &mut |_, _| {});
    assert!(run(&mut s, opts("100", 10), -1).is_err());
    let mut o = opts("100", 10);
    o.after_group = Some(-5);
    assert!(run(&mut s, o, 0).is_err());
    let mut o = opts("100", 10);
    o.max_groups = Some(0);
    assert!(run(&mut s, o, 0).is_err());
    assert!(run(&mut s, opts("100", 0), 0).is_err());
    assert_eq!(s.tables, before.tables);
}

#[test]
fn min_saved_rows_and_never_growing_are_honoured() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 1000);
    let before = s.clone();
    let sum = engine::compress_room(
        &mut s,
        "!a:hs",
        opts("100,50,25", 100),
        1_000_000,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(!sum.written);
    assert!(matches!(
        sum.not_written,
        Some(NotWritten::BelowMinimum { .. })
    ));
    assert_eq!(s.tables, before.tables);

    // A short room is already optimal: nothing to change, nothing written.
    let mut t = MemStore::default();
    linear_room(&mut t, "!b:hs", 1, 50);
    let sum = compress(&mut t, "!b:hs", opts("100,50,25", 100));
    assert!(!sum.written);
    assert_eq!(sum.rows_after, sum.rows_before);

    // Tiny levels on a short room would add rows: undone as a whole.
    let mut u = MemStore::default();
    linear_room(&mut u, "!c:hs", 1, 60);
    let before = u.clone();
    let sum = compress(&mut u, "!c:hs", opts("2", 100));
    assert!(!sum.written, "{sum:?}");
    assert!(matches!(
        sum.not_written,
        Some(NotWritten::WouldNotSave { .. })
    ));
    assert_eq!(u.tables, before.tables);
}

#[test]
fn after_group_and_max_groups_bound_the_range() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 1000);
    let before = s.clone();
    let mut o = opts("100,50,25", 50);
    o.after_group = Some(200);
    o.max_groups = Some(500);
    let sum = compress(&mut s, "!a:hs", o);
    assert_eq!(sum.state_groups, 500);
    check_invariants(&before, &s, 175);
    for id in (1..=200).chain(701..=1000) {
        assert_eq!(before.tables.edges.get(&id), s.tables.edges.get(&id));
        assert_eq!(before.tables.rows.get(&id), s.tables.rows.get(&id));
    }
}

#[test]
fn purged_predecessors_cycles_and_corrupt_groups_are_skipped_not_fatal() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 600);
    // Purged predecessor: group 150 vanished, its child still points at it.
    s.tables.groups.remove(&150);
    s.tables.rows.remove(&150);
    s.tables.edges.remove(&150);
    // A cycle: 305 -> 320 (higher) and 320 -> 305 chain.
    s.tables.edges.insert(305, vec![320]);
    // Two predecessors.
    s.tables.edges.insert(410, vec![409, 408]);
    // Conflicting and exact duplicates.
    s.tables
        .rows
        .get_mut(&450)
        .unwrap()
        .push(row("m.room.member", "@dup:hs", "$x"));
    s.tables
        .rows
        .get_mut(&450)
        .unwrap()
        .push(row("m.room.member", "@dup:hs", "$y"));
    let dup = s.tables.rows[&460][0].clone();
    s.tables.rows.get_mut(&460).unwrap().push(dup);
    // Pending deletion and persisting.
    s.tables.pending_deletion.insert(500);
    s.tables.persisting.insert(520);
    let before = s.clone();
    let sum = compress(&mut s, "!a:hs", opts("100,50,25", 37));
    check_invariants(&before, &s, 175);
    assert!(sum.groups_skipped >= 5, "{sum:?}");
    assert!(sum.groups_changed > 0, "{sum:?}");
    assert_untouched(&before, &s, &[305, 410, 450, 500, 520]);
}

/// Synapse resolves a group with a higher or a second predecessor from every group it
/// reaches, highest id first: rewriting any of those (each keeping its own state) can
/// still change that group's state. They must be left as they are.
#[test]
fn groups_a_malformed_group_reaches_are_left_alone() {
    let r = "!a:hs";
    let build = |second_pred: bool| {
        let mut s = MemStore::default();
        s.insert(group(
            1,
            r,
            None,
            vec![row("a", "", "$a1"), row("b", "", "$b1")],
        ));
        let mut two = group(2, r, Some(5), vec![row("a", "", "$a2")]);
        if second_pred {
            two.prevs = vec![1, 3];
        }
        s.insert(two);
        s.insert(group(3, r, Some(1), vec![row("b", "", "$b3")]));
        s.insert(group(
            4,
            r,
            None,
            vec![
                row("a", "", "$a4"),
                row("b", "", "$b1"),
                row("c", "", "$c4"),
            ],
        ));
        s.insert(group(
            5,
            r,
            Some(3),
            vec![row("b", "", "$b1"), row("c", "", "$c5")],
        ));
        s.insert(group(
            6,
            r,
            None,
            vec![
                row("a", "", "$a1"),
                row("b", "", "$b1"),
                row("c", "", "$c5"),
                row("d", "", "$d6"),
            ],
        ));
        s
    };
    for second_pred in [false, true] {
        for levels in ["100", "2", "1,1"] {
            for chunk in [1, 2, 100] {
                let mut s = build(second_pred);
                let before = s.clone();
                compress(&mut s, r, opts(levels, chunk));
                check_invariants(&before, &s, 100);
                // Group 2 reaches 5, 3, 1 (or, with two predecessors, 1 and 3).
                let reached: &[GroupId] = if second_pred { &[1, 3] } else { &[1, 3, 5] };
                assert_untouched(&before, &s, reached);
            }
        }
    }
}

#[test]
fn interleaved_rooms_are_compressed_independently() {
    let mut s = MemStore::default();
    // Ids interleave: room a gets odd ids, room b even ids.
    for (room, off) in [("!a:hs", 1), ("!b:hs", 2)] {
        let mut t = MemStore::default();
        linear_room(&mut t, room, 1, 400);
        for (id, r) in &t.tables.groups {
            let map = |g: i64| (g - 1) * 2 + off;
            s.insert(synapse_compress_core::RawGroup {
                id: map(*id),
                room_id: Some(r.clone()),
                prevs: t
                    .tables
                    .edges
                    .get(id)
                    .into_iter()
                    .flatten()
                    .map(|&p| map(p))
                    .collect(),
                rows: t.tables.rows.get(id).cloned().unwrap_or_default(),
            });
        }
    }
    let before = s.clone();
    compress(&mut s, "!a:hs", opts("100,50,25", 33));
    check_invariants(&before, &s, 175);
    for id in before.tables.groups.keys().filter(|id| *id % 2 == 0) {
        assert_eq!(before.tables.edges.get(id), s.tables.edges.get(id));
        assert_eq!(before.tables.rows.get(id), s.tables.rows.get(id));
    }
}
