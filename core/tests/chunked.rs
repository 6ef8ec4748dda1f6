//! The worker's path: a room compressed one chunk per "transaction" from saved
//! progress, with Synapse adding groups in between. Every group must keep its state,
//! nothing may grow, and stale saved levels must be detected.

mod common;
use common::*;

use synapse_compress_core::engine::DEFAULT_MEMORY_LIMIT;
use synapse_compress_core::engine::{
    compress_chunk, Carried, ChunkLimits, ChunkOutcome, ChunkResult, Progress, MAX_CHUNK_GROWTH,
};
use synapse_compress_core::{Error, GroupId, LevelSpec, Levels, RawGroup, StateRow};
use synapse_compress_testkit::generator;
use synapse_compress_testkit::memstore::{Call, MemStore, Observed};
use synapse_compress_testkit::rng::Rng;

fn load(seed: u64) -> (MemStore, Vec<String>) {
    let mut s = MemStore::default();
    let mut rooms = Vec::new();
    generator::generate(&generator::random(seed), &mut |g| {
        let room = g.group.room_id.clone().expect("rooms");
        if !rooms.contains(&room) {
            rooms.push(room);
        }
        s.insert(g.group);
    });
    (s, rooms)
}

fn fresh(levels: &str) -> Progress {
    Progress {
        last_compressed: 0,
        levels: Levels::new(&LevelSpec::parse(levels).unwrap()),
    }
}

/// Compress `room` chunk by chunk up to `upto`; returns the outcomes.
fn drain(s: &mut MemStore, room: &str, p: &mut Progress, limits: ChunkLimits) -> Vec<ChunkOutcome> {
    let mut out = Vec::new();
    let mut carried = Carried::default();
    for _ in 0..100_000 {
        let rows = total_rows(s);
        let r = compress_chunk(s, room, p, limits, std::mem::take(&mut carried)).expect("chunk");
        carried = r.carried.clone();
        assert!(total_rows(s) <= rows, "a chunk made the room grow");
        if let ChunkOutcome::NotSaved { .. } = r.outcome {
            assert_eq!(total_rows(s), rows, "an undone chunk left writes");
        }
        *p = r.progress;
        if let ChunkOutcome::Done = r.outcome {
            return out;
        }
        out.push(r.outcome);
    }
    panic!("compression of {room} never finished");
}

/// `compress_chunk`, and how many calls of kind `call` it made to the store.
fn counting(
    call: Call,
    s: &mut MemStore,
    room: &str,
    p: &Progress,
    limits: ChunkLimits,
    carried: Carried,
) -> (ChunkResult, usize) {
    let mut calls = 0;
    let mut observed = Observed {
        inner: s,
        observe: |c, _| calls += usize::from(c == call),
    };
    let r = compress_chunk(&mut observed, room, p, limits, carried).expect("chunk");
    (r, calls)
}

/// A new group on the room's newest one, as Synapse would write it meanwhile.
fn synapse_writes(s: &MemStore, room: &str, rng: &mut Rng) -> RawGroup {
    let next = s.tables.groups.keys().max().copied().unwrap_or(0) + 1;
    let prev = s
        .tables
        .groups
        .iter()
        .filter(|(_, r)| *r == room)
        .map(|(id, _)| *id)
        .max();
    let key = format!("@late{}:hs", rng.below(5));
    group(
        next,
        room,
        prev,
        vec![row("m.room.member", &key, &format!("$late{next}"))],
    )
}

#[test]
fn chunk_by_chunk_with_concurrent_writes_keeps_every_groups_state() {
    let mut written = 0;
    for seed in 0..40u64 {
        let mut rng = Rng::derive(seed, 11);
        let (mut s, rooms) = load(seed);
        if seed % 4 == 0 {
            // Synapse's own markers: never rewritten, never a base.
            let ids: Vec<GroupId> = s.tables.groups.keys().copied().collect();
            for _ in 0..3 {
                s.tables.pending_deletion.insert(ids[rng.index(ids.len())]);
                s.tables.persisting.insert(ids[rng.index(ids.len())]);
            }
        }
        let mut before = s.clone();
        let chunk_size = [1, 7, 50, 500][rng.index(4)];
        for room in &rooms {
            let mut p = fresh("100,50,25");
            // Two "runs": each compresses what existed when it started, while new
            // groups arrive; the second continues from the first's progress.
            for _ in 0..2 {
                let upto = *s.tables.groups.keys().max().unwrap();
                let limits = ChunkLimits {
                    chunk_size,
                    upto,
                    min_saved_rows: 0,
                    memory_limit: DEFAULT_MEMORY_LIMIT,
                };
                let rows = total_rows(&s);
                let outcomes = drain(&mut s, room, &mut p, limits);
                written += outcomes
                    .iter()
                    .filter(|o| matches!(o, ChunkOutcome::Written(r) if r.changed > 0))
                    .count();
                assert!(total_rows(&s) <= rows);
                for _ in 0..rng.below(30) {
                    let g = synapse_writes(&s, room, &mut rng);
                    before.insert(g.clone());
                    s.insert(g);
                }
            }
        }
        check_invariants(&before, &s, 175.max(max_depth(&before)));
    }
    assert!(
        written > 25,
        "too few chunks written to prove anything: {written}"
    );
}

#[test]
fn chunks_that_pay_equal_one_run() {
    let mut one = MemStore::default();
    linear_room(&mut one, "!r:hs", 1, 1500);
    let mut chunked = one.clone();
    let summary = compress(&mut one, "!r:hs", opts("100,50,25", 500));
    let mut p = fresh("100,50,25");
    let limits = ChunkLimits {
        chunk_size: 250,
        upto: 1500,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let outcomes = drain(&mut chunked, "!r:hs", &mut p, limits);
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, ChunkOutcome::Written(_))));
    assert_eq!(one.tables, chunked.tables);
    assert_eq!(
        summary.end.as_ref(),
        Some(&p),
        "compress_room reports the same progress"
    );
}

#[test]
fn a_chunk_below_the_minimum_is_undone_and_levels_restart() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!r:hs", 1, 400);
    let before = s.clone();
    let mut p = fresh("100,50,25");
    let limits = ChunkLimits {
        chunk_size: 150,
        upto: 400,
        min_saved_rows: 1_000_000,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let outcomes = drain(&mut s, "!r:hs", &mut p, limits);
    let undone = outcomes
        .iter()
        .filter(|o| matches!(o, ChunkOutcome::NotSaved { .. }))
        .count();
    assert!(undone >= 1, "{outcomes:?}");
    // The rest changed nothing (the first chunk is already as the levels want it).
    assert!(outcomes.iter().all(|o| match o {
        ChunkOutcome::Written(r) => r.changed == 0,
        _ => true,
    }));
    assert_eq!(s.tables, before.tables);
    assert_eq!(p.last_compressed, 400);
}

/// Synapse's chains are at most 99 hops (it writes a delta only on a chain of fewer
/// than 100 groups); the levels' at most the sum of their sizes.
fn chain_bound(levels: &str) -> u32 {
    LevelSpec::parse(levels).unwrap().max_hops().max(99)
}

/// A room as Synapse writes it, where each group changes one of three keys of a
/// 40-key state: a full snapshot every 100 groups (ids 1, 101, 201, ...), deltas of
/// one row between. The levels turn the snapshots into deltas of a few rows.
fn few_changes_room(s: &mut MemStore, room: &str, n: usize) {
    let mut state: Vec<StateRow> = (0..40)
        .map(|k| row("m.room.member", &format!("@u{k}:hs"), &format!("$j{k}")))
        .collect();
    for i in 0..n {
        let id = 1 + i as GroupId;
        let k = i % 3;
        let new = row("m.room.member", &format!("@u{k}:hs"), &format!("$e{i}"));
        state[k] = new.clone();
        let g = if i % 100 == 0 {
            group(id, room, None, state.clone())
        } else {
            group(id, room, Some(id - 1), vec![new])
        };
        s.insert(g);
    }
}

#[test]
fn an_undone_chunk_never_leaves_chains_beyond_the_bound() {
    // Levels 50,50 from id 3: the first chunk (ids 3..=2402) puts id 2402 about 95
    // deep. Synapse stored ids 2403..=2500 as deltas on it (id 2401 is its snapshot),
    // so undoing the second chunk would leave id 2500 about 95 + 98 hops deep: beyond
    // both the levels' 100 and Synapse's 99.
    let levels = "50,50";
    let bound = chain_bound(levels);
    let mut s = MemStore::default();
    few_changes_room(&mut s, "!r:hs", 2600);
    let original = s.clone();
    let mut limits = ChunkLimits {
        chunk_size: 2400,
        upto: 2600,
        min_saved_rows: 1,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let p = Progress {
        last_compressed: 2,
        levels: Levels::new(&LevelSpec::parse(levels).unwrap()),
    };
    let r = compress_chunk(&mut s, "!r:hs", &p, limits, Carried::default()).expect("chunk");
    assert!(
        matches!(&r.outcome, ChunkOutcome::Written(rep) if rep.last == 2402 && rep.changed > 0),
        "{:?}",
        r.outcome
    );
    let d = s.depth(2402).unwrap();
    assert!(
        d + 98 > bound,
        "id 2402 at depth {d}: too shallow for this test"
    );
    assert!(
        max_depth(&s) > bound,
        "the stored tree between chunks is deep"
    );
    // The second chunk does not pay (the minimum is out of reach).
    limits.min_saved_rows = 1_000_000;
    let before = s.clone();
    let first = r.clone();
    let r = compress_chunk(&mut s, "!r:hs", &r.progress, limits, r.carried).expect("chunk");
    check_invariants(&before, &s, bound);
    check_invariants(&original, &s, bound);
    assert!(
        max_depth(&s) <= bound,
        "chains of {} hops left, bound {bound} ({:?})",
        max_depth(&s),
        r.outcome
    );
    assert_eq!(r.progress.last_compressed, 2600);

    // The same in steps of 5 groups: the stretch (8 steps, 40 groups) passes the bound
    // after its first step. The depths it reports must be those an undo brings back,
    // not those its own earlier steps wrote.
    let mut s = before.clone();
    let steps = ChunkLimits {
        chunk_size: 5,
        ..limits
    };
    let r = compress_chunk(&mut s, "!r:hs", &first.progress, steps, first.carried).expect("chunk");
    assert!(
        matches!(&r.outcome, ChunkOutcome::Written(rep)
            if rep.groups == 40 && rep.max_stored_depth > bound),
        "{:?}",
        r.outcome
    );
    for id in 1..=r.progress.last_compressed {
        let d = s.depth(id).unwrap();
        assert!(d <= bound, "group {id} left {d} hops deep, bound {bound}");
    }
    check_invariants(&before, &s, max_depth(&before));

    // A chunk whose undo leaves chains within the bound is still undone.
    let mut s = original.clone();
    let r =
        compress_chunk(&mut s, "!r:hs", &fresh(levels), limits, Carried::default()).expect("chunk");
    assert!(
        matches!(r.outcome, ChunkOutcome::NotSaved { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(s.tables, original.tables);
}

#[test]
fn a_chunk_that_does_not_pay_is_extended_without_reading_a_group_twice() {
    // Levels with a snapshot every 1,000 groups turn Synapse's snapshots (ids 101, 201,
    // ...) into deltas, each saving about 39 rows. A minimum out of reach: the chunk
    // is extended to `MAX_CHUNK_GROWTH` times its size, then undone. Each group of the
    // stretch is loaded once (retrying the stretch from its start at each size would
    // load 150 + 300 + 600 + 1200).
    const LEVELS: &str = "1000,100";
    let mut s = MemStore::default();
    few_changes_room(&mut s, "!r:hs", 1300);
    let original = s.clone();
    let limits = ChunkLimits {
        chunk_size: 150,
        upto: 1300,
        min_saved_rows: 1_000_000,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let mut loaded = 0;
    let mut observed = Observed {
        inner: &mut s,
        observe: |call, groups| {
            if call == Call::LoadChunk {
                loaded += groups
            }
        },
    };
    let r = compress_chunk(
        &mut observed,
        "!r:hs",
        &fresh(LEVELS),
        limits,
        Carried::default(),
    )
    .expect("chunk");
    let stretch = 150 * MAX_CHUNK_GROWTH;
    match &r.outcome {
        ChunkOutcome::NotSaved { report, saved } => {
            assert_eq!(report.groups as usize, stretch);
            assert!(report.changed > 0 && *saved < 1_000_000, "{report:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(loaded, stretch, "groups loaded as the chunk's");
    assert_eq!(r.progress.last_compressed, stretch as GroupId);
    assert_eq!(s.tables, original.tables, "an undone chunk left writes");

    // 60 rows are out of reach of one chunk size, within reach of a few. The stretch
    // stops at the first size that pays, and is kept.
    let mut limits = limits;
    limits.min_saved_rows = 60;
    let mut s = original.clone();
    let r =
        compress_chunk(&mut s, "!r:hs", &fresh(LEVELS), limits, Carried::default()).expect("chunk");
    let ChunkOutcome::Written(report) = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(report.rows_before - report.rows_after >= 60, "{report:?}");
    assert!(
        report.groups > 150 && report.groups % 150 == 0 && report.groups < 150 * 8,
        "{report:?}"
    );
    check_invariants(&original, &s, chain_bound(LEVELS));
}

#[test]
fn stale_saved_levels_are_detected_and_restarted() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!r:hs", 1, 600);
    let mut p = fresh("100,50,25");
    let limits = ChunkLimits {
        chunk_size: 300,
        upto: 300,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    drain(&mut s, "!r:hs", &mut p, limits);
    // Someone else rebuilds the room with long chains: the saved heads are now deeper
    // than the saved levels allow.
    compress(&mut s, "!r:hs", opts("600", 1000));
    let before = s.clone();
    let limits = ChunkLimits {
        chunk_size: 100,
        upto: 600,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let r = compress_chunk(&mut s, "!r:hs", &p, limits, Carried::default()).unwrap();
    assert!(r.levels_reset, "deep heads went unnoticed");
    check_invariants(&before, &s, 600);
    let mut p = r.progress;
    drain(&mut s, "!r:hs", &mut p, limits);
    check_invariants(&before, &s, 600);
}

#[test]
fn small_chunks_save_about_as_much_as_one_run() {
    let mut one = MemStore::default();
    linear_room(&mut one, "!r:hs", 1, 3000);
    let mut chunked = one.clone();
    compress(&mut one, "!r:hs", opts("100,50,25", 100_000));
    let mut p = fresh("100,50,25");
    let limits = ChunkLimits {
        chunk_size: 60,
        upto: 3000,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    drain(&mut chunked, "!r:hs", &mut p, limits);
    let (whole, small) = (total_rows(&one), total_rows(&chunked));
    assert!(
        small * 10 <= whole * 12,
        "60-group chunks left {small} rows, one run {whole}"
    );
}

/// A scheduled chunk covers `chunk_size` groups even when memory makes the engine read
/// it in smaller slices: a short chunk would tell the scheduler the room was done.
#[test]
fn a_chunk_read_in_slices_is_still_full() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!r:hs", 1, 1200);
    let limits = ChunkLimits {
        chunk_size: 500,
        upto: 1200,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let r = compress_chunk(
        &mut s,
        "!r:hs",
        &fresh("100,50,25"),
        limits,
        Carried::default(),
    )
    .unwrap();
    let groups = match &r.outcome {
        ChunkOutcome::Written(rep) | ChunkOutcome::NotSaved { report: rep, .. } => rep.groups,
        ChunkOutcome::Done => 0,
    };
    assert_eq!(groups, 500, "the chunk stopped after {groups} groups");
    assert_eq!(r.progress.last_compressed, 500);
}

/// The room's groups in `first..=last` stored without a predecessor.
fn stored_snapshots(s: &MemStore, room: &str, first: GroupId, last: GroupId) -> Vec<GroupId> {
    s.tables
        .groups
        .range(first..=last)
        .filter(|(id, r)| *r == room && s.tables.edges.get(id).is_none_or(|e| e.is_empty()))
        .map(|(id, _)| *id)
        .collect()
}

#[test]
fn chunk_reports_list_the_snapshots_they_leave() {
    let mut checked = 0;
    for seed in 0..20u64 {
        let (mut s, rooms) = load(seed);
        for room in &rooms {
            let upto = s.tables.groups.keys().max().copied().unwrap_or(0);
            // A high minimum undoes some chunks: their report names the stored ones.
            let limits = ChunkLimits {
                chunk_size: 40,
                upto,
                min_saved_rows: if seed % 2 == 0 { 0 } else { 50 },
                memory_limit: DEFAULT_MEMORY_LIMIT,
            };
            let mut p = fresh("10,5");
            loop {
                let before = s.clone();
                let r =
                    compress_chunk(&mut s, room, &p, limits, Carried::default()).expect("chunk");
                p = r.progress;
                let (rep, listed) = match &r.outcome {
                    ChunkOutcome::Done => break,
                    ChunkOutcome::Written(rep) => (rep, &rep.snapshots),
                    ChunkOutcome::NotSaved { report, .. } => (report, &report.stored_snapshots),
                };
                assert_eq!(
                    *listed,
                    stored_snapshots(&s, room, rep.first, rep.last),
                    "seed {seed}, room {room}"
                );
                assert_eq!(
                    rep.stored_snapshots,
                    stored_snapshots(&before, room, rep.first, rep.last),
                    "seed {seed}, room {room}: as loaded"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "{checked} chunks checked");
}

/// A run's chunk of another room takes over the last chunk's slice sizing
/// (`Carried::sizing_only`): a small room is then read in one slice, not a first
/// slice of 100 groups and the rest. Sizing decides nothing that is written: every
/// group keeps its state.
#[test]
fn another_rooms_sizing_reads_a_small_room_in_one_slice() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!a:hs", 1, 300);
    linear_room(&mut s, "!b:hs", 1001, 300);
    let original = s.clone();
    let limits = ChunkLimits {
        chunk_size: 500,
        upto: 2000,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let chunk_loads = |s: &mut MemStore, room: &str, carried: Carried| {
        counting(
            Call::LoadChunk,
            s,
            room,
            &fresh("100,50,25"),
            limits,
            carried,
        )
    };
    let (a, loads_a) = chunk_loads(&mut s, "!a:hs", Carried::default());
    assert!(
        matches!(a.outcome, ChunkOutcome::Written(_)),
        "{:?}",
        a.outcome
    );
    assert_eq!(
        loads_a, 2,
        "a fresh run starts with a first slice of 100 groups"
    );
    let (b, loads_b) = chunk_loads(&mut s, "!b:hs", a.carried.sizing_only());
    assert!(
        matches!(b.outcome, ChunkOutcome::Written(_)),
        "{:?}",
        b.outcome
    );
    assert_eq!(loads_b, 1, "room b in one slice");
    check_invariants(&original, &s, 175);
}

/// A room's next chunk takes over the caches its last chunk left (`Carried`), so it
/// reads fewer stored chains, and writes exactly what it would have written without
/// them. (That caches are refused where they are not the stored tree is tested with
/// `Run::take_over`.)
#[test]
fn a_rooms_next_chunk_takes_over_the_caches_and_writes_the_same() {
    let mut original = MemStore::default();
    linear_room(&mut original, "!r:hs", 1, 1600);
    let limits = ChunkLimits {
        chunk_size: 500,
        upto: 1600,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let chains = |s: &mut MemStore, p: &Progress, carried: Carried| {
        counting(Call::LoadChain, s, "!r:hs", p, limits, carried)
    };
    let mut s = original.clone();
    let (first, _) = chains(&mut s, &fresh("100,50,25"), Carried::default());
    assert!(first.carried.has_cache(), "a chunk leaves its caches");
    let after_first = s.clone();

    let (cached, cached_loads) = chains(&mut s, &first.progress, first.carried.clone());
    assert!(!first.carried.has_cache(), "the caches are taken once");
    let mut plain = after_first.clone();
    let (uncached, plain_loads) = chains(&mut plain, &first.progress, Carried::default());
    assert!(
        cached_loads < plain_loads,
        "with the caches {cached_loads} chain reads, without {plain_loads}"
    );
    assert!(
        s.tables == plain.tables,
        "the caches changed what was written"
    );
    assert_eq!(cached.progress, uncached.progress);
    check_invariants(&original, &s, 175);
}

/// Caches carried between chunks hold what was read in an earlier transaction: a
/// group Synapse marked for deletion since is still a usable base there. The store
/// refuses it at the write (`Store::write_chunk`), the chunk is retried without the
/// caches, and no group gets a predecessor pending deletion.
#[test]
fn a_base_marked_for_deletion_between_chunks_is_refused_at_the_write() {
    let mut s = MemStore::default();
    linear_room(&mut s, "!r:hs", 1, 1600);
    let limits = ChunkLimits {
        chunk_size: 500,
        upto: 1600,
        min_saved_rows: 0,
        memory_limit: DEFAULT_MEMORY_LIMIT,
    };
    let first = compress_chunk(
        &mut s,
        "!r:hs",
        &fresh("100,50,25"),
        limits,
        Carried::default(),
    )
    .expect("chunk");
    // Synapse marks the levels' heads meanwhile.
    let marked: Vec<GroupId> = first.progress.levels.heads().collect();
    assert!(!marked.is_empty());
    for &g in &marked {
        s.tables.pending_deletion.insert(g);
    }
    let before = s.clone();
    let refused = compress_chunk(
        &mut s,
        "!r:hs",
        &first.progress,
        limits,
        first.carried.clone(),
    );
    assert!(
        matches!(refused, Err(Error::Concurrent { group, .. }) if marked.contains(&group)),
        "{:?}",
        refused.map(|r| r.outcome)
    );
    assert!(s.tables == before.tables, "a refused chunk wrote");
    // The retry (the same `Carried`: its caches were taken) reads the marks.
    let r = compress_chunk(&mut s, "!r:hs", &first.progress, limits, first.carried).expect("chunk");
    assert!(
        matches!(r.outcome, ChunkOutcome::Written(_)),
        "{:?}",
        r.outcome
    );
    for (g, prevs) in &s.tables.edges {
        if before.tables.edges.get(g) != Some(prevs) {
            assert!(
                !prevs.iter().any(|p| marked.contains(p)),
                "group {g} was given predecessor {prevs:?}, marked for deletion"
            );
        }
    }
    // Against the store as marked: states kept, and no group the second chunk changed
    // is based on a marked group (the first chunk's bases, chosen before the marks,
    // stay).
    check_invariants(&before, &s, 175);
}
