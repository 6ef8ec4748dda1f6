//! Property tests: many random Synapse-shaped databases (linear chains, forks, spam
//! joins, backfilled roots, interleaved rooms), some corrupted the way real databases
//! are (purged predecessors, cycles, two predecessors, duplicates, pending deletion),
//! compressed with random levels and chunk sizes. After every run every group must
//! resolve exactly as before and every rewritten group must form a valid tree.

mod common;
use common::*;

use synapse_compress_core::engine;
use synapse_compress_core::generator::{self, GenSpec};
use synapse_compress_core::memstore::MemStore;
use synapse_compress_core::rng::Rng;
use synapse_compress_core::{GroupId, LevelSpec, StateRow};

const LEVELS: &[&str] = &[
    "100,50,25",
    "3",
    "5,3",
    "10,10,10",
    "1",
    "2,2",
    "7,1,4",
    "100",
];

fn load(spec: &GenSpec) -> (MemStore, Vec<String>) {
    load_spec(spec)
}

/// Damage a database the ways admins report.
fn corrupt(s: &mut MemStore, rng: &mut Rng) {
    let ids: Vec<GroupId> = s.tables.groups.keys().copied().collect();
    if ids.len() < 4 {
        return;
    }
    for _ in 0..1 + rng.below(4) {
        let id = ids[rng.index(ids.len())];
        match rng.below(7) {
            0 => {
                // Purged without de-delta: children keep their edge to it.
                s.tables.groups.remove(&id);
                s.tables.rows.remove(&id);
                s.tables.edges.remove(&id);
            }
            1 => {
                let other = ids[rng.index(ids.len())];
                s.tables.edges.insert(id, vec![other]); // may be higher, or a cycle
            }
            2 => {
                let other = ids[rng.index(ids.len())];
                s.tables.edges.entry(id).or_default().push(other);
            }
            3 => {
                if let Some(rows) = s.tables.rows.get_mut(&id) {
                    if let Some(r) = rows.first().cloned() {
                        rows.push(r.clone());
                        if rng.chance(0.5) {
                            rows.push(StateRow {
                                event_id: "$conflict".into(),
                                ..r
                            });
                        }
                    }
                }
            }
            4 => {
                s.tables.rows.remove(&id);
            }
            5 => {
                s.tables.pending_deletion.insert(id);
            }
            _ => {
                s.tables.persisting.insert(id);
            }
        }
    }
}

#[test]
fn random_databases_keep_every_groups_state() {
    let mut changed_total = 0;
    for seed in 0..300u64 {
        let mut rng = Rng::derive(seed, 7);
        let (mut s, rooms) = load(&generator::random(seed));
        if seed % 3 == 0 {
            corrupt(&mut s, &mut rng);
        }
        let before = s.clone();
        let levels = LEVELS[rng.index(LEVELS.len())];
        let max_hops = LevelSpec::parse(levels).unwrap().max_hops();
        let chunk = [1, 2, 13, 64, 500, 100_000][rng.index(6)];
        for room in &rooms {
            let Ok(sum) =
                engine::compress_room(&mut s, room, opts(levels, chunk), 0, &mut |_, _| {})
            else {
                // Only a room purged entirely by the corruption may be refused.
                assert!(
                    !s.tables.groups.values().any(|r| r == room),
                    "seed {seed}: room {room} refused"
                );
                continue;
            };
            assert!(
                sum.rows_after <= sum.rows_before || !sum.written,
                "seed {seed}: room grew"
            );
            changed_total += sum.groups_changed;
        }
        check_invariants(&before, &s, max_hops.max(before_max_depth(&before)));
    }
    assert!(
        changed_total > 1000,
        "the runs changed too little to prove anything: {changed_total}"
    );
}

/// Edges Synapse never writes (a second predecessor, one with a higher id, cycles):
/// Synapse resolves such a group from every group it reaches, highest id first, so
/// none of those may be rewritten, and everything else must still keep its state.
#[test]
fn malformed_edges_do_not_change_any_groups_state() {
    let mut rewritten = 0;
    for seed in 3000..3150u64 {
        let mut rng = Rng::derive(seed, 11);
        let (mut s, rooms) = load(&generator::random(seed));
        let ids: Vec<GroupId> = s.tables.groups.keys().copied().collect();
        if ids.len() < 4 {
            continue;
        }
        for _ in 0..1 + rng.below(3) {
            let (id, other) = (ids[rng.index(ids.len())], ids[rng.index(ids.len())]);
            if rng.chance(0.5) {
                s.tables.edges.entry(id).or_default().push(other);
            } else {
                s.tables.edges.insert(id, vec![other]);
            }
        }
        let before = s.clone();
        let levels = LEVELS[rng.index(LEVELS.len())];
        let chunk = [1, 13, 500][rng.index(3)];
        for room in &rooms {
            if let Ok(sum) =
                engine::compress_room(&mut s, room, opts(levels, chunk), 0, &mut |_, _| {})
            {
                rewritten += sum.groups_changed;
            }
        }
        let max_hops = LevelSpec::parse(levels).unwrap().max_hops();
        check_invariants(&before, &s, max_hops.max(before_max_depth(&before)));
    }
    assert!(rewritten > 1000, "too little was rewritten: {rewritten}");
}

/// Chains the data already had (untouched groups keep them).
fn before_max_depth(s: &MemStore) -> u32 {
    s.tables
        .groups
        .keys()
        .filter_map(|&id| s.depth(id))
        .max()
        .unwrap_or(0)
}

#[test]
fn chunked_equals_unchunked_and_dry_run_predicts() {
    for seed in 1000..1080u64 {
        let (base, rooms) = load(&generator::random(seed));
        let mut outcomes = Vec::new();
        for chunk in [1, 9, 100_000] {
            let mut s = base.clone();
            let mut rows_after = Vec::new();
            for room in &rooms {
                let mut o = opts("100,50,25", chunk);
                o.dry_run = true;
                let dry = engine::compress_room(&mut s, room, o, 0, &mut |_, _| {}).unwrap();
                let real = compress(&mut s, room, opts("100,50,25", chunk));
                assert_eq!(
                    dry.rows_after, real.rows_after,
                    "seed {seed}: dry run mispredicted"
                );
                assert_eq!(dry.groups_changed, real.groups_changed, "seed {seed}");
                rows_after.push(real.rows_after);
            }
            check_invariants(&base, &s, 175);
            outcomes.push((s.tables, rows_after));
        }
        assert!(
            outcomes.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: chunk size changed the result"
        );
    }
}

#[test]
fn levels_compatible_with_the_existing_tool_bound_chains() {
    // With fresh levels every rewritten group's chain is within the sum of the levels.
    for seed in 2000..2040u64 {
        let (mut s, rooms) = load(&generator::random(seed));
        let before = s.clone();
        for room in &rooms {
            compress(&mut s, room, opts("4,3,2", 17));
        }
        check_invariants(&before, &s, 9.max(before_max_depth(&before)));
    }
}

#[test]
fn level_heads_stay_within_the_depth_the_levels_give_them() {
    // The saved levels are trusted on resume only if the head of level i is at most
    // sum over j >= i of (length_j - 1) hops deep; bases chosen off the level
    // structure (a group's real branch) must keep that so.
    for seed in 3000..3060u64 {
        let mut rng = Rng::derive(seed, 11);
        let (mut s, rooms) = load(&generator::random(seed));
        // Groups Synapse is deleting or persisting: neither rewritten nor bases, so
        // branches must be followed around them.
        let ids: Vec<GroupId> = s.tables.groups.keys().copied().collect();
        for &id in &ids {
            if rng.chance(0.03) {
                s.tables.pending_deletion.insert(id);
            } else if rng.chance(0.03) {
                s.tables.persisting.insert(id);
            }
        }
        let before = s.clone();
        let levels = LEVELS[rng.index(LEVELS.len())];
        let chunk = [1, 7, 64, 100_000][rng.index(4)];
        for room in &rooms {
            let Ok(mut run) = engine::Run::start(&mut s, room, opts(levels, chunk)) else {
                continue;
            };
            while run.step(&mut s).expect("step").is_some() {
                let ls = run.levels().levels();
                for (i, l) in ls.iter().enumerate() {
                    let Some(head) = l.head else { continue };
                    let bound: u32 = ls[i..]
                        .iter()
                        .map(|l| l.current_length.saturating_sub(1))
                        .sum();
                    let depth = s.depth(head).expect("a head has a simple chain");
                    assert!(
                        depth <= bound,
                        "seed {seed} levels {levels}: head {head} of level {} is {depth} \
                         hops deep, more than {bound}",
                        i + 1
                    );
                }
            }
        }
        let max_hops = LevelSpec::parse(levels).unwrap().max_hops();
        check_invariants(&before, &s, max_hops.max(before_max_depth(&before)));
    }
}
