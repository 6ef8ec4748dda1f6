//! Synapse's de-delta (issue 12): its deletion loop rewrites surviving groups as full
//! snapshots. The scheduled runs then send the room's progress back below the first
//! such group (to just below the highest snapshot they left under it, with fresh
//! levels, as `revisit` does in the extension) and compress it again chunk by chunk.
//! The rows must come back close to the first run's result, every group's state kept.
//!
//! The data is the e2e case `redelta`'s (headline 0.03 seed 61, manyrooms 0.01 seed 62).

mod common;
use common::*;

use std::collections::BTreeSet;

use synapse_compress_core::engine::DEFAULT_MEMORY_LIMIT;
use synapse_compress_core::engine::{compress_chunk, Carried, ChunkLimits, ChunkOutcome, Progress};
use synapse_compress_core::{GroupId, LevelSpec, Levels};
use synapse_compress_testkit::generator;
use synapse_compress_testkit::memstore::{MemStore, Resolution};

const LEVELS: &str = "100,50,25";

fn limits(upto: GroupId) -> ChunkLimits {
    ChunkLimits {
        chunk_size: 500,
        memory_limit: DEFAULT_MEMORY_LIMIT,
        upto,
        min_saved_rows: 1,
    }
}

/// Compress `room` chunk by chunk from `p` to the end, as the scheduled runs do.
fn drain(s: &mut MemStore, room: &str, mut p: Progress) -> Progress {
    let upto = *s.tables.groups.keys().max().unwrap();
    let mut carried = Carried::default();
    loop {
        let r =
            compress_chunk(s, room, &p, limits(upto), std::mem::take(&mut carried)).expect("chunk");
        carried = r.carried.clone();
        p = r.progress;
        if let ChunkOutcome::Done = r.outcome {
            return p;
        }
    }
}

fn fresh(after: GroupId) -> Progress {
    Progress {
        last_compressed: after,
        levels: Levels::new(&LevelSpec::parse(LEVELS).unwrap()),
    }
}

/// A fixed pseudo-random order (like the e2e case's `ORDER BY md5(id)`).
fn scramble(id: GroupId, salt: u64) -> u64 {
    let mut x = (id as u64) ^ salt;
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// Rows: (start, first run, after the de-delta, next run).
fn redelta_figures() -> (usize, usize, usize, usize) {
    let mut more = generator::manyrooms(0.01, 62);
    more.first_id = 500_000;
    let (mut s, rooms) = load_spec(&generator::headline(0.03, 61));
    let (s2, rooms2) = load_spec(&more);
    for id in s2.tables.groups.keys() {
        let g = s2.tables.groups[id].clone();
        s.insert(synapse_compress_core::RawGroup {
            id: *id,
            room_id: Some(g),
            prevs: s2.tables.edges.get(id).cloned().unwrap_or_default(),
            rows: s2.tables.rows.get(id).cloned().unwrap_or_default(),
        });
    }
    let rooms: Vec<String> = rooms.into_iter().chain(rooms2).collect();
    let groups_start = s.tables.groups.len();
    let rows_start = total_rows(&s);

    // First run.
    let mut progress = Vec::new();
    for room in &rooms {
        progress.push(drain(&mut s, room, fresh(0)));
    }
    let rows_first = total_rows(&s);
    // The snapshots the runs left (recorded by the extension).
    let recorded: BTreeSet<GroupId> = s
        .tables
        .groups
        .keys()
        .filter(|id| !s.tables.edges.contains_key(id))
        .copied()
        .collect();

    // De-delta 10% of the groups with an edge; delete 1% of the unreferenced ones.
    let mut edged: Vec<GroupId> = s.tables.edges.keys().copied().collect();
    edged.sort_by_key(|&id| scramble(id, 1));
    edged.truncate(groups_start / 10);
    let dedelta: BTreeSet<GroupId> = edged.into_iter().collect();
    let referenced: BTreeSet<GroupId> = s.tables.edges.values().flatten().copied().collect();
    let mut leaves: Vec<GroupId> = s
        .tables
        .groups
        .keys()
        .filter(|id| !referenced.contains(id) && !dedelta.contains(id))
        .copied()
        .collect();
    leaves.sort_by_key(|&id| scramble(id, 2));
    leaves.truncate(groups_start / 100);
    let full: Vec<(GroupId, Vec<_>)> = dedelta
        .iter()
        .map(|&id| match s.resolve(id) {
            Resolution::State(m) => (
                id,
                m.into_iter()
                    .map(|((t, k), e)| row(&t, &k, &e))
                    .collect::<Vec<_>>(),
            ),
            r => panic!("group {id} resolves to {r:?}"),
        })
        .collect();
    for (id, rows) in full {
        s.tables.edges.remove(&id);
        s.tables.rows.insert(id, rows);
    }
    for id in &leaves {
        s.tables.edges.remove(id);
        s.tables.rows.remove(id);
        s.tables.groups.remove(id);
    }
    let rows_dedelta = total_rows(&s);
    let before = s.clone();

    // The next run: each room with a de-delta goes back to just below the highest
    // recorded snapshot under its lowest de-deltaed group, with fresh levels.
    for room in &rooms {
        let lowest = dedelta
            .iter()
            .find(|id| s.tables.groups.get(id) == Some(room))
            .copied();
        let Some(a) = lowest else { continue };
        let back = recorded
            .range(..a)
            .rev()
            .find(|id| s.tables.groups.get(id) == Some(room))
            .map_or(0, |&id| id - 1);
        drain(&mut s, room, fresh(back));
    }
    let rows_next = total_rows(&s);
    check_invariants(&before, &s, LevelSpec::parse(LEVELS).unwrap().max_hops());
    eprintln!(
        "FIGURE redelta core: groups {groups_start}, de-deltaed {}; rows {rows_start} -> first run \
         {rows_first} -> de-delta {rows_dedelta} -> next run {rows_next} ({:+.2}%)",
        dedelta.len(),
        100.0 * (rows_next as f64 / rows_first as f64 - 1.0)
    );
    (rows_start, rows_first, rows_dedelta, rows_next)
}

/// Issue 12 asks for 5%. Without the planner's recent choice this data came back at
/// +7% (a de-deltaed group has no stored predecessor to follow); with it, +3.7%.
#[test]
fn after_a_de_delta_the_next_run_comes_back_within_5_percent() {
    let (start, first, dedelta, next) = redelta_figures();
    assert!(first < start, "the first run compressed");
    assert!(dedelta > 2 * first, "the de-delta grew the rows");
    assert!(
        next * 100 <= first * 105,
        "rows {next} not within 5% of the first run's {first}"
    );
}
