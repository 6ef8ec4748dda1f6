//! How far our trees are from the best possible one (issue 11, item 5).
//!
//! In a room of at most `max_hops + 1` groups no chain can break the depth bound, so
//! the best tree under the bound lets each group choose on its own: an earlier group of
//! its room whose keys are a subset of its own (any one: a lower id cannot close a
//! cycle) and whose state differs from its own in the fewest entries, or none (a full
//! snapshot). The sum of those choices is the exact optimum; every pair is tried. The
//! states come from the test kit's oracle of Synapse's read (`MemStore::resolve`), and
//! the pricing is written here: nothing of the planner is used to judge it.
//!
//! Figures: `cargo test --release -p synapse_compress_core --test optimal -- --nocapture`

mod common;
use common::*;

use std::cmp::Ordering;
use std::collections::HashMap;

use synapse_compress_core::engine;
use synapse_compress_core::{GroupId, LevelSpec};
use synapse_compress_testkit::generator::{self, GenSpec};
use synapse_compress_testkit::memstore::{MemStore, Resolution};

const LEVELS: &str = "100,50,25";

/// A resolved state as (key, event) ids, sorted by key.
type Entries = Vec<(u32, u32)>;

/// Rows a group with `state` stores on `base`: its entries that `base` lacks or holds
/// with another event; `None` when `base` has a key `state` lacks (not a valid base).
fn rows_on(state: &Entries, base: &Entries) -> Option<usize> {
    let (mut i, mut rows) = (0, 0);
    for &(key, event) in base {
        loop {
            let &(k, e) = state.get(i)?;
            i += 1;
            match k.cmp(&key) {
                Ordering::Less => rows += 1,
                Ordering::Equal => {
                    rows += usize::from(e != event);
                    break;
                }
                Ordering::Greater => return None,
            }
        }
    }
    Some(rows + state.len() - i)
}

/// The rows of the best tree for `room` with no bound on chain length (exact when the
/// room has too few groups for any chain to reach the bound; a lower bound otherwise).
fn optimal_rows(s: &MemStore, room: &str) -> u64 {
    let (mut keys, mut events) = (HashMap::new(), HashMap::new());
    let states: Vec<Entries> = s
        .tables
        .groups
        .iter()
        .filter(|(_, r)| *r == room)
        .map(|(&id, _)| {
            let Resolution::State(m) = s.resolve(id) else {
                panic!("group {id} does not resolve");
            };
            let mut v: Entries = m
                .into_iter()
                .map(|(k, e)| {
                    let (nk, ne) = (keys.len() as u32, events.len() as u32);
                    (*keys.entry(k).or_insert(nk), *events.entry(e).or_insert(ne))
                })
                .collect();
            v.sort_unstable();
            v
        })
        .collect();
    states
        .iter()
        .enumerate()
        .map(|(i, state)| {
            states[..i]
                .iter()
                .filter_map(|base| rows_on(state, base))
                .fold(state.len(), usize::min) as u64
        })
        .sum()
}

/// The rooms of the preset `SC_PRESET` (default forks) at `SC_SCALE` (default 1) with
/// `SC_SEED` (default 1): its name and scale, the store and its rooms.
fn preset_from_env() -> (String, MemStore, Vec<String>) {
    let name = std::env::var("SC_PRESET").unwrap_or_else(|_| "forks".into());
    let var = |k: &str, d: f64| std::env::var(k).map_or(d, |v| v.parse().expect("a number"));
    let spec = generator::preset(&name, var("SC_SCALE", 1.0), var("SC_SEED", 1.0) as u64)
        .expect("a preset");
    let (s, rooms) = load_spec(&spec);
    (format!("{name} x{}", var("SC_SCALE", 1.0)), s, rooms)
}

/// compress_room on `room` with the default levels: its summary and the room's rows
/// after (a room the engine leaves alone keeps its rows: its plan would not save).
fn ours_after(s: &mut MemStore, room: &str) -> (engine::Summary, u64) {
    let sum =
        engine::compress_room(s, room, opts(LEVELS, 500), 0, &mut |_, _| {}).expect("compress");
    let after = if sum.written {
        sum.rows_after
    } else {
        sum.rows_before
    };
    (sum, after)
}

/// One workload's totals over its rooms small enough for the exact optimum.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    rooms: u64,
    groups: u64,
    before: u64,
    tool: u64,
    ours: u64,
    optimum: u64,
}

/// Every room of `spec` with at most `max_hops + 1` groups: rows before, after the
/// existing tool's level algorithm (modelled), after compress_room, and the optimum.
fn measure(label: &str, spec: &GenSpec) -> Figures {
    let levels = LevelSpec::parse(LEVELS).unwrap();
    let limit = levels.max_hops() as usize + 1;
    let (mut s, rooms) = load_spec(spec);
    let mut f = Figures::default();
    for room in &rooms {
        let groups = s.tables.groups.values().filter(|r| *r == room).count();
        if groups > limit {
            continue;
        }
        let optimum = optimal_rows(&s, room);
        let (tool, _) = plain_levels(&s, room, &levels);
        let (sum, ours) = ours_after(&mut s, room);
        for (who, rows) in [
            ("ours", ours),
            ("the tool", tool),
            ("before", sum.rows_before),
        ] {
            assert!(
                optimum <= rows,
                "{label} {room}: {who} {rows} rows < the optimum {optimum}: the optimum is wrong"
            );
        }
        f.rooms += 1;
        f.groups += groups as u64;
        f.before += sum.rows_before;
        f.tool += tool;
        f.ours += ours;
        f.optimum += optimum;
    }
    let r = |x: u64| x as f64 / f.optimum.max(1) as f64;
    println!(
        "{label:<22} rooms {:>4}  groups {:>6}  rows: before {:>7} ({:.2}x)  tool {:>7} ({:.3}x)  \
         ours {:>7} ({:.3}x)  optimum {:>7}",
        f.rooms,
        f.groups,
        f.before,
        r(f.before),
        f.tool,
        r(f.tool),
        f.ours,
        r(f.ours),
        f.optimum
    );
    f
}

/// The workloads of `make bench`, at sizes where their rooms fit under the bound, and
/// random rooms: ours within 10% of the optimum overall and within 15% on each. (With
/// the existing tool's second snapshot at group 101 the headline room's came out at
/// 1.95x the optimum, and all of them at 1.24x; the tool's level walk, as modelled in
/// `common::plain_levels`, comes to 1.3-2.7x.)
#[test]
fn small_rooms_come_close_to_the_optimal_tree() {
    let mut random = GenSpec {
        rooms: Vec::new(),
        ..generator::random(0)
    };
    for seed in 7000..7040u64 {
        random.rooms.extend(generator::random(seed).rooms);
    }
    let mut total = Figures::default();
    for (label, spec) in [
        ("manyrooms x0.1", generator::manyrooms(0.1, 1)),
        ("small", generator::small(1.0, 2)),
        ("forks x0.03", generator::forks(0.03, 3)),
        ("spamjoin x0.008", generator::spamjoin(0.008, 4)),
        ("headline x0.002", generator::headline(0.002, 5)),
        ("random (40 seeds)", random),
    ] {
        let f = measure(label, &spec);
        assert!(f.rooms > 0, "{label}: no room small enough");
        assert!(
            f.ours * 100 <= f.optimum * 115,
            "{label}: ours {} rows, more than 15% above the optimum {}",
            f.ours,
            f.optimum
        );
        total.ours += f.ours;
        total.optimum += f.optimum;
    }
    assert!(
        total.ours * 100 <= total.optimum * 110,
        "ours {} rows, more than 10% above the optimum {}",
        total.ours,
        total.optimum
    );
}

/// The pricing itself, on states small enough to check by hand.
#[test]
fn rows_on_prices_a_base_by_the_entries_it_gets_wrong() {
    let state = vec![(1, 10), (2, 20), (3, 30)];
    assert_eq!(rows_on(&state, &vec![]), Some(3));
    assert_eq!(rows_on(&state, &state), Some(0));
    assert_eq!(rows_on(&state, &vec![(2, 20)]), Some(2));
    assert_eq!(rows_on(&state, &vec![(1, 11), (3, 30)]), Some(2));
    assert_eq!(rows_on(&state, &vec![(4, 40)]), None);
    assert_eq!(rows_on(&state, &vec![(0, 1), (1, 10)]), None);
    assert_eq!(
        rows_on(&state, &vec![(1, 10), (2, 20), (3, 30), (4, 40)]),
        None
    );
}

/// Figures on rooms of any size: rows before, ours and the best tree with no bound on
/// chain length, which bounds from below what any tree can reach (the depth bound only
/// removes choices). For the "≤ half the tool's rows" on forked rooms: the
/// tool keeps most of a forked room's rows (it skips chunks that would grow), so half
/// its rows is about half the rows before.
/// `SC_PRESET` (default forks), `SC_SCALE` (default 1), `SC_SEED` (default 1):
/// `cargo test --release -p synapse_compress_core --test optimal -- --ignored --nocapture`
#[test]
#[ignore]
fn lower_bound_figures() {
    let (name, mut s, rooms) = preset_from_env();
    let (mut before, mut ours, mut bound) = (0u64, 0u64, 0u64);
    for room in &rooms {
        let lower = optimal_rows(&s, room);
        let (sum, after) = ours_after(&mut s, room);
        assert!(lower <= after, "{room}: ours {after} < the bound {lower}");
        println!(
            "{room}: groups {:>6}  rows before {:>8}  ours {:>8}  bound {:>8}  ours/bound {:.3}",
            sum.state_groups,
            sum.rows_before,
            after,
            lower,
            after as f64 / lower.max(1) as f64
        );
        before += sum.rows_before;
        ours += after;
        bound += lower;
    }
    println!(
        "{name}: rows before {before}  ours {ours}  bound {bound}  ours/bound {:.3}  \
         bound/before {:.3}",
        ours as f64 / bound.max(1) as f64,
        bound as f64 / before.max(1) as f64
    );
}

/// What Synapse's read of each group visits: its chain's rows and hops, one entry per
/// group, computed from the stored tables alone (nothing of the engine).
fn read_costs(s: &MemStore) -> Vec<(u64, u32)> {
    let mut memo: HashMap<GroupId, (u64, u32)> = HashMap::new();
    for &id in s.tables.groups.keys() {
        // Up the chain to a group already priced (or the chain's end), then back down.
        let mut chain = vec![];
        let mut at = Some(id);
        while let Some(g) = at.filter(|g| !memo.contains_key(g)) {
            chain.push(g);
            at = s.tables.edges.get(&g).and_then(|e| e.first()).copied();
        }
        let (mut rows, mut hops) = at.map_or((0, 0), |g| {
            let (r, h) = memo[&g];
            (r, h + 1)
        });
        for (i, g) in chain.into_iter().rev().enumerate() {
            rows += s.tables.rows.get(&g).map_or(0, |r| r.len() as u64);
            if i > 0 {
                hops += 1;
            }
            memo.insert(g, (rows, hops));
        }
    }
    memo.into_values().collect()
}

/// The cost of Synapse's full-state read (issue 11, item 6) before and after
/// compress_room, over every group: the rows its chain holds (the read fetches and
/// sorts them all) and its hops (it looks up one edge per group of the chain). The same
/// as `READ_COST` in bench/bench.py measures over a sample in the database.
/// `SC_PRESET` etc. as for `lower_bound_figures`.
#[test]
#[ignore]
fn read_cost_figures() {
    let (name, mut s, rooms) = preset_from_env();
    let show = |label: &str, s: &MemStore| {
        let costs = read_costs(s);
        assert_eq!(costs.len(), s.tables.groups.len());
        let pick = |mut v: Vec<u64>| {
            v.sort_unstable();
            (v[v.len() / 2], v[v.len() * 99 / 100])
        };
        let rows = pick(costs.iter().map(|c| c.0).collect());
        let hops = pick(costs.iter().map(|c| c.1 as u64).collect());
        let stored: usize = s.tables.rows.values().map(Vec::len).sum();
        println!(
            "{name} {label}: rows stored {stored}; a read visits rows {} / {} and hops {} / {} \
             (median / p99)",
            rows.0, rows.1, hops.0, hops.1
        );
    };
    show("before", &s);
    for room in &rooms {
        ours_after(&mut s, room);
    }
    show("after compress_room", &s);
}
