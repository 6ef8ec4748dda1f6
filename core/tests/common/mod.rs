//! Shared by the integration tests: tiny room builders and the invariant checker.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::rc::Rc;

use proptest::test_runner::{Config, RngSeed};

use synapse_compress_core::engine::{self, Options, Summary};
use synapse_compress_core::hash::FxHashMap;
use synapse_compress_core::state::{Dictionary, State};
use synapse_compress_core::{GroupId, LevelSpec, RawGroup, StateRow};
use synapse_compress_testkit::memstore::{MemStore, Resolution};

pub fn row(t: &str, k: &str, e: &str) -> StateRow {
    StateRow::new(t, k, e)
}

pub fn group(id: GroupId, room: &str, prev: Option<GroupId>, rows: Vec<StateRow>) -> RawGroup {
    RawGroup {
        id,
        room_id: Some(room.to_owned()),
        prevs: prev.into_iter().collect(),
        rows,
    }
}

/// A room written the way Synapse writes it: each group adds one member event on the
/// previous group; every 100 hops a full snapshot.
pub fn linear_room(store: &mut MemStore, room: &str, first_id: GroupId, n: usize) -> Vec<GroupId> {
    let mut state: Vec<StateRow> = vec![row("m.room.create", "", &format!("$create{room}"))];
    let mut chain = 0;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = first_id + i as GroupId;
        let new = row(
            "m.room.member",
            &format!("@u{}:hs", i % 37),
            &format!("$e{room}{i}"),
        );
        state.retain(|r| !(r.event_type() == new.event_type() && r.state_key() == new.state_key()));
        state.push(new.clone());
        let g = if i == 0 || chain >= 100 {
            chain = 1;
            group(id, room, None, state.clone())
        } else {
            chain += 1;
            group(id, room, Some(id - 1), vec![new])
        };
        store.insert(g);
        ids.push(id);
    }
    ids
}

pub fn opts(levels: &str, chunk: usize) -> Options {
    Options {
        levels: LevelSpec::parse(levels).unwrap(),
        chunk_size: chunk,
        dry_run: false,
        after_group: None,
        max_groups: None,
        memory_limit: engine::DEFAULT_MEMORY_LIMIT,
        recent_choice: true,
    }
}

pub fn compress(store: &mut MemStore, room: &str, o: Options) -> Summary {
    engine::compress_room(store, room, o, 0, &mut |_, _| {}).expect("compress")
}

/// Every id the tables mention anywhere.
pub fn all_ids(s: &MemStore) -> BTreeSet<GroupId> {
    let t = &s.tables;
    t.groups
        .keys()
        .chain(t.edges.keys())
        .chain(t.rows.keys())
        .copied()
        .collect()
}

fn keys(r: &Resolution) -> BTreeSet<(String, String)> {
    match r {
        Resolution::State(m) => m.keys().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

/// The correctness contract: every group resolves as before (Synapse's semantics);
/// every changed group has a lower predecessor whose keys are a subset of its own and
/// a chain within `max_hops`; frozen groups are untouched.
pub fn check_invariants(before: &MemStore, after: &MemStore, max_hops: u32) {
    assert_eq!(
        before.tables.groups, after.tables.groups,
        "groups were added or removed"
    );
    for id in all_ids(before) {
        let (rb, ra) = (before.resolve(id), after.resolve(id));
        assert_eq!(rb, ra, "state of group {id} changed");
        let changed = before.tables.edges.get(&id) != after.tables.edges.get(&id)
            || before.tables.rows.get(&id) != after.tables.rows.get(&id);
        if !changed {
            continue;
        }
        assert!(
            !before.tables.pending_deletion.contains(&id)
                && !before.tables.persisting.contains(&id),
            "frozen group {id} was rewritten"
        );
        let prevs = after.tables.edges.get(&id).cloned().unwrap_or_default();
        assert!(
            prevs.len() <= 1,
            "group {id} got {} predecessors",
            prevs.len()
        );
        if let Some(&p) = prevs.first() {
            assert!(p < id, "group {id} got higher predecessor {p}");
            assert!(
                after.tables.groups.contains_key(&p),
                "group {id} based on missing {p}"
            );
            assert!(
                !after.tables.pending_deletion.contains(&p),
                "group {id} based on doomed {p}"
            );
            assert!(
                keys(&after.resolve(p)).is_subset(&keys(&ra)),
                "group {id}: base keys not a subset"
            );
        }
        let d = after.depth(id).expect("rewritten group has a simple chain");
        assert!(
            d <= max_hops,
            "group {id} has a chain of {d} hops > {max_hops}"
        );
    }
}

/// The stored edge and rows of each group are as they were.
pub fn assert_untouched(before: &MemStore, after: &MemStore, ids: &[GroupId]) {
    for id in ids {
        let (b, a) = (&before.tables, &after.tables);
        assert_eq!(b.edges.get(id), a.edges.get(id), "edge of group {id}");
        assert_eq!(b.rows.get(id), a.rows.get(id), "rows of group {id}");
    }
}

pub fn total_rows(s: &MemStore) -> usize {
    s.tables.rows.values().map(Vec::len).sum()
}

/// The longest stored chain of any group (hops); untouched groups keep theirs.
pub fn max_depth(s: &MemStore) -> u32 {
    s.tables
        .groups
        .keys()
        .filter_map(|&id| s.depth(id))
        .max()
        .unwrap_or(0)
}

/// Property tests run `cases` cases from a fixed seed, so a run is reproducible and CI
/// sees the same cases every time; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override
/// them to explore further (e.g. `PROPTEST_RNG_SEED=$RANDOM PROPTEST_CASES=2000`).
pub fn proptest_config(cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(0x5359_4e41_5053_4531);
    }
    c
}

/// A generated database in memory, and its rooms in order of first appearance.
pub fn load_spec(spec: &synapse_compress_testkit::generator::GenSpec) -> (MemStore, Vec<String>) {
    let mut s = MemStore::default();
    let mut rooms: Vec<String> = Vec::new();
    synapse_compress_testkit::generator::generate(spec, &mut |g| {
        let room = g
            .group
            .room_id
            .clone()
            .expect("generated groups have rooms");
        if !rooms.contains(&room) {
            rooms.push(room);
        }
        s.insert(g.group);
    });
    (s, rooms)
}

/// The existing tool's result on one room, modelled independently of the planner:
/// groups in id order, each placed on the head the levels propose, or the nearest
/// ancestor of it (in the new tree) whose keys are a subset of the group's, else a
/// full snapshot. Returns its rows after (the sum of the resulting deltas) and the sum
/// of the groups' chain lengths (hops) in its tree.
pub fn plain_levels(s: &MemStore, room: &str, spec: &LevelSpec) -> (u64, u64) {
    let mut dict = Dictionary::default();
    let mut levels = ToolLevels::new(spec);
    let mut states: FxHashMap<GroupId, Rc<State>> = FxHashMap::default();
    // New predecessor and depth of each group.
    let mut placed: FxHashMap<GroupId, (Option<GroupId>, u64)> = FxHashMap::default();
    let (mut rows, mut hops) = (0u64, 0u64);
    for (&id, r) in &s.tables.groups {
        if r != room {
            continue;
        }
        let raw = s.tables.rows.get(&id).cloned().unwrap_or_default();
        let own = State::from_rows(&mut dict, &raw).expect("generated rows are unambiguous");
        let state = match s.tables.edges.get(&id).map(Vec::as_slice) {
            None | Some([]) => own,
            Some([p]) => states[p].overlay(&own),
            Some(more) => panic!("group {id} has {} predecessors", more.len()),
        };
        let mut base = levels.place(id);
        while let Some(b) = base {
            if states[&b].keys_subset_of(&state) {
                break;
            }
            base = placed[&b].0;
        }
        let depth = base.map_or(0, |b| placed[&b].1 + 1);
        rows += match base {
            Some(b) => state.delta_from(&states[&b]).len(),
            None => state.len(),
        } as u64;
        hops += depth;
        placed.insert(id, (base, depth));
        states.insert(id, Rc::new(state));
    }
    (rows, hops)
}

/// The existing tool's level walk, as it is (not `Levels`, which starts the empty
/// levels at a room's first group): the first level not full gives its head as the
/// predecessor; a full level restarts at the group, which goes one level up; an empty
/// level has no head, so the first group a level gets is a full snapshot.
struct ToolLevels(Vec<(u32, u32, Option<GroupId>)>);

impl ToolLevels {
    fn new(spec: &LevelSpec) -> Self {
        ToolLevels(spec.sizes().iter().map(|&size| (size, 0, None)).collect())
    }

    fn place(&mut self, group: GroupId) -> Option<GroupId> {
        for (size, length, head) in &mut self.0 {
            if *length < *size {
                *length += 1;
                return head.replace(group);
            }
            (*length, *head) = (1, Some(group));
        }
        None
    }
}
