//! Property tests: many random Synapse-shaped databases (linear chains, forks, spam
//! joins, backfilled roots, interleaved rooms), some damaged the way real databases
//! are (purged predecessors, cycles, two predecessors, duplicates, pending deletion),
//! compressed with random levels and chunk sizes. After every run every group must
//! resolve exactly as before and every rewritten group must form a valid tree.
//!
//! The damage is a list of `Corruption`s applied to a generated database, so proptest
//! shrinks a failure to the fewest, simplest corruptions (and the smallest seed, levels
//! and chunk size) that still break it. Cases come from a fixed seed (see
//! `common::proptest_config`); `PROPTEST_RNG_SEED` and `PROPTEST_CASES` explore more.

mod common;
use common::*;

use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;
use synapse_compress_core::engine;
use synapse_compress_core::{GroupId, LevelSpec};
use synapse_compress_testkit::generator::{self, GenSpec};
use synapse_compress_testkit::memstore::MemStore;

/// Cases per property (each a whole generated database, compressed room by room).
const PROPERTY_CASES: u32 = 300;
const MALFORMED_CASES: u32 = 150;
const HEADS_CASES: u32 = 60;

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

/// One way admins report their databases damaged. Groups are picked by `Index` into
/// the database's group ids (as generated, before any damage).
#[derive(Clone, Debug)]
enum Corruption {
    /// Purged without de-delta: its children keep their edge to it.
    Purge(Index),
    /// Its edge replaced by one to another group (may be higher, or close a cycle).
    Repoint(Index, Index),
    /// A second predecessor.
    ExtraEdge(Index, Index),
    /// Its first row stored twice.
    DuplicateRow(Index),
    /// Its first row stored again, naming another event (an ambiguous state).
    ConflictingRow(Index),
    /// Its rows lost.
    DropRows(Index),
    /// Synapse is deleting it.
    PendingDeletion(Index),
    /// Synapse is persisting it.
    Persisting(Index),
}

fn corruption() -> impl Strategy<Value = Corruption> {
    use Corruption::*;
    prop_oneof![
        any::<Index>().prop_map(Purge),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Repoint(a, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| ExtraEdge(a, b)),
        any::<Index>().prop_map(DuplicateRow),
        any::<Index>().prop_map(ConflictingRow),
        any::<Index>().prop_map(DropRows),
        any::<Index>().prop_map(PendingDeletion),
        any::<Index>().prop_map(Persisting),
    ]
}

/// Edges Synapse never writes: a second predecessor, one with a higher id, cycles.
fn malformed_edge() -> impl Strategy<Value = Corruption> {
    use Corruption::*;
    prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Repoint(a, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| ExtraEdge(a, b)),
    ]
}

/// Groups Synapse is deleting or persisting.
fn freeze() -> impl Strategy<Value = Corruption> {
    use Corruption::*;
    prop_oneof![
        any::<Index>().prop_map(PendingDeletion),
        any::<Index>().prop_map(Persisting),
    ]
}

/// Damage a database (of at least 4 groups; smaller ones are left as they are).
fn corrupt(s: &mut MemStore, damage: &[Corruption]) {
    let ids: Vec<GroupId> = s.tables.groups.keys().copied().collect();
    if ids.len() < 4 {
        return;
    }
    let at = |i: &Index| ids[i.index(ids.len())];
    let t = &mut s.tables;
    for c in damage {
        match c {
            Corruption::Purge(i) => {
                let id = at(i);
                t.groups.remove(&id);
                t.rows.remove(&id);
                t.edges.remove(&id);
            }
            Corruption::Repoint(i, o) => {
                t.edges.insert(at(i), vec![at(o)]);
            }
            Corruption::ExtraEdge(i, o) => t.edges.entry(at(i)).or_default().push(at(o)),
            Corruption::DuplicateRow(i) | Corruption::ConflictingRow(i) => {
                let Some(rows) = t.rows.get_mut(&at(i)) else {
                    continue;
                };
                let Some(r) = rows.first().cloned() else {
                    continue;
                };
                rows.push(r.clone());
                if matches!(c, Corruption::ConflictingRow(_)) {
                    rows.push(r.with_event("$conflict"));
                }
            }
            Corruption::DropRows(i) => {
                t.rows.remove(&at(i));
            }
            Corruption::PendingDeletion(i) => {
                t.pending_deletion.insert(at(i));
            }
            Corruption::Persisting(i) => {
                t.persisting.insert(at(i));
            }
        }
    }
}

/// A generated database (by seed), its damage, and the levels and chunk size to
/// compress it with.
#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    damage: Vec<Corruption>,
    levels: &'static str,
    chunk: usize,
}

fn case(
    seeds: std::ops::Range<u64>,
    damage: impl Strategy<Value = Vec<Corruption>>,
    chunks: &'static [usize],
) -> impl Strategy<Value = Case> {
    (
        seeds,
        damage,
        prop::sample::select(LEVELS),
        prop::sample::select(chunks),
    )
        .prop_map(|(seed, damage, levels, chunk)| Case {
            seed,
            damage,
            levels,
            chunk,
        })
}

/// Run `cases` cases of `property`, which returns how many groups it changed, and
/// check the runs changed more than `at_least` groups in all (else they prove little).
fn check(
    cases: u32,
    strategy: impl Strategy<Value = Case>,
    at_least: u64,
    property: impl Fn(&Case) -> u64,
) {
    let changed = Cell::new(0);
    TestRunner::new(proptest_config(cases))
        .run(&strategy, |c| {
            changed.set(changed.get() + property(&c));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        changed.get() > at_least,
        "the runs changed too little to prove anything: {}",
        changed.get()
    );
}

/// Compress every room of the case's database; return how many groups changed.
fn compress_damaged(c: &Case) -> u64 {
    let (mut s, rooms) = load(&generator::random(c.seed));
    corrupt(&mut s, &c.damage);
    let before = s.clone();
    let mut changed = 0;
    for room in &rooms {
        let Ok(sum) =
            engine::compress_room(&mut s, room, opts(c.levels, c.chunk), 0, &mut |_, _| {})
        else {
            // Only a room purged entirely by the corruption may be refused.
            assert!(
                !s.tables.groups.values().any(|r| r == room),
                "room {room} refused"
            );
            continue;
        };
        assert!(
            sum.rows_after <= sum.rows_before || !sum.written,
            "room {room} grew"
        );
        changed += sum.groups_changed;
    }
    let max_hops = LevelSpec::parse(c.levels).unwrap().max_hops();
    check_invariants(&before, &s, max_hops.max(before_max_depth(&before)));
    changed
}

#[test]
fn random_databases_keep_every_groups_state() {
    // A third of the cases undamaged, as real databases mostly are.
    let damage = prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec(corruption(), 1..5),
    ];
    check(
        PROPERTY_CASES,
        case(0..1 << 32, damage, &[1, 2, 13, 64, 500, 100_000]),
        1000,
        compress_damaged,
    );
}

/// Edges Synapse never writes (a second predecessor, one with a higher id, cycles):
/// Synapse resolves such a group from every group it reaches, highest id first, so
/// none of those may be rewritten, and everything else must still keep its state.
#[test]
fn malformed_edges_do_not_change_any_groups_state() {
    let damage = prop::collection::vec(malformed_edge(), 1..4);
    check(
        MALFORMED_CASES,
        case(0..1 << 32, damage, &[1, 13, 500]),
        1000,
        compress_damaged,
    );
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
    // The planner's recent choice looks back within a slice, so only without it is the
    // result independent of chunk boundaries; with it, within 5% of the rows.
    for (seed, recent_choice) in (1000..1080u64).flat_map(|s| [(s, false), (s, true)]) {
        let (base, rooms) = load(&generator::random(seed));
        let mut outcomes = Vec::new();
        for chunk in [1, 9, 100_000] {
            let mut s = base.clone();
            let mut rows_after = Vec::new();
            for room in &rooms {
                let mut o = opts("100,50,25", chunk);
                o.recent_choice = recent_choice;
                let real_opts = o.clone();
                o.dry_run = true;
                let dry = engine::compress_room(&mut s, room, o, 0, &mut |_, _| {}).unwrap();
                let real = compress(&mut s, room, real_opts);
                assert_eq!(
                    dry.rows_after, real.rows_after,
                    "seed {seed}: dry run mispredicted"
                );
                assert_eq!(dry.groups_changed, real.groups_changed, "seed {seed}");
                rows_after.push(real.rows_after);
            }
            check_invariants(&base, &s, 175);
            let rows = total_rows(&s);
            outcomes.push((s.tables, rows_after, rows));
        }
        if recent_choice {
            let whole = outcomes[2].2;
            for &(_, _, rows) in &outcomes {
                assert!(
                    rows * 100 <= whole * 105,
                    "seed {seed}: {rows} rows after, {whole} in one chunk"
                );
            }
        } else {
            assert!(
                outcomes.windows(2).all(|w| w[0] == w[1]),
                "seed {seed}: chunk size changed the result"
            );
        }
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

/// The saved levels are trusted on resume only if the head of level i is at most
/// sum over j >= i of (length_j - 1) hops deep; bases chosen off the level structure
/// (a group's real branch) must keep that so. Groups Synapse is deleting or persisting
/// are neither rewritten nor bases, so branches must be followed around them.
#[test]
fn level_heads_stay_within_the_depth_the_levels_give_them() {
    let damage = prop::collection::vec(freeze(), 0..24);
    check(
        HEADS_CASES,
        case(0..1 << 32, damage, &[1, 7, 64, 100_000]),
        100,
        |c| {
            let (mut s, rooms) = load(&generator::random(c.seed));
            corrupt(&mut s, &c.damage);
            let before = s.clone();
            let mut changed = 0;
            for room in &rooms {
                let Ok(mut run) = engine::Run::start(&mut s, room, opts(c.levels, c.chunk)) else {
                    continue;
                };
                while let Some(report) = run.step(&mut s).expect("step") {
                    changed += report.changed;
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
                            "head {head} of level {} is {depth} hops deep, more than {bound}",
                            i + 1
                        );
                    }
                }
            }
            let max_hops = LevelSpec::parse(c.levels).unwrap().max_hops();
            check_invariants(&before, &s, max_hops.max(before_max_depth(&before)));
            changed
        },
    );
}
