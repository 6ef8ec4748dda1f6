//! The memory ceiling (`Options::memory_limit`): the engine's accounting never passes
//! the limit, a tight limit changes how a room is read (smaller slices, shed caches)
//! but never a group's state, and a group that cannot fit alone fails the run with
//! `Error::MemoryLimit`, nothing written. Without the planner's recent choice (which
//! looks back within a slice only) a tight limit never changes what is written; with
//! it, it rarely does, and by at most 5% of the rows.

mod common;
use common::*;

use synapse_compress_core::engine::{self, DEFAULT_MEMORY_LIMIT};
use synapse_compress_core::engine::{compress_chunk, Carried, ChunkLimits, Progress};
use synapse_compress_core::{Error, LevelSpec, Levels};
use synapse_compress_testkit::generator;
use synapse_compress_testkit::memstore::MemStore;
use synapse_compress_testkit::rng::Rng;

const LEVELS: &[&str] = &["100,50,25", "3", "5,3", "10,10,10"];

/// Compress every room with `limit`; `None` if some room did not fit (after checking
/// that the failed run wrote nothing).
fn compress_all(
    s: &mut MemStore,
    rooms: &[String],
    levels: &str,
    chunk: usize,
    limit: usize,
    recent_choice: bool,
    slices_over_chunks: &mut u64,
) -> Option<Vec<u64>> {
    let mut rows_after = Vec::new();
    let mut all_fit = true;
    for room in rooms {
        let before = s.tables.clone();
        let mut o = opts(levels, chunk);
        o.memory_limit = limit;
        o.recent_choice = recent_choice;
        match engine::compress_room(s, room, o, 0, &mut |_, _| {}) {
            Ok(sum) => {
                assert!(
                    sum.memory_peak as usize <= limit,
                    "accounted {} bytes, limit {limit}",
                    sum.memory_peak
                );
                *slices_over_chunks += sum.slices - sum.chunks;
                rows_after.push(sum.rows_after);
            }
            Err(Error::MemoryLimit {
                group,
                needed,
                limit: l,
            }) => {
                assert_eq!(l as usize, limit);
                assert!(needed as usize > limit && group.is_some());
                assert!(s.tables == before, "a run out of memory wrote to {room}");
                all_fit = false;
            }
            Err(e) => panic!("room {room}: {e}"),
        }
    }
    all_fit.then_some(rows_after)
}

#[test]
fn tight_limits_write_what_unlimited_runs_write() {
    let (mut compared, mut refused, mut shrunk, mut differ) = (0, 0, 0, 0);
    // (`shrunk`: slices beyond one per chunk; the big-state test asserts on them.)
    for (seed, recent) in (0..60u64).flat_map(|s| [(s, false), (s, true)]) {
        let mut rng = Rng::derive(seed, 0x004d_454d);
        let (base, rooms) = load_spec(&generator::random(seed));
        let levels = LEVELS[rng.index(LEVELS.len())];
        let chunk = [1, 13, 500][rng.index(3)];
        let mut free = base.clone();
        let want = compress_all(&mut free, &rooms, levels, chunk, usize::MAX, recent, &mut 0)
            .expect("an unlimited run fits");
        for limit in [24 << 10, 96 << 10, 512 << 10, 4 << 20] {
            let mut s = base.clone();
            match compress_all(&mut s, &rooms, levels, chunk, limit, recent, &mut shrunk) {
                Some(got) if recent && (got != want || s.tables != free.tables) => {
                    let (g, w) = (total_rows(&s), total_rows(&free));
                    assert!(
                        g * 100 <= w * 105,
                        "seed {seed} limit {limit}: {g} rows, unlimited {w}"
                    );
                    differ += 1;
                    compared += 1;
                }
                Some(got) => {
                    assert_eq!(got, want, "seed {seed} limit {limit}: rows after differ");
                    assert!(
                        s.tables == free.tables,
                        "seed {seed} limit {limit}: other rows written"
                    );
                    compared += 1;
                }
                None => refused += 1,
            }
            let max_hops = LevelSpec::parse(levels).unwrap().max_hops();
            check_invariants(&base, &s, max_hops.max(max_depth(&base)));
        }
    }
    assert!(
        compared >= 100,
        "too few runs fitted to compare: {compared}"
    );
    assert!(refused > 0, "no limit was tight enough to refuse a run");
    // A cut-off recent choice is rare; a difference in many runs would be something
    // else (a shed cache read back wrong).
    assert!(
        differ * 20 <= compared,
        "{differ} of {compared} limited runs wrote other rows"
    );
}

#[test]
fn a_big_state_room_in_a_small_limit_is_read_in_many_slices() {
    // ~4,800 members, snapshots of ~4,800 rows every 100 groups. Limits below what the
    // room holds at its peak unlimited (its raw snapshots, mostly: resolved states
    // share their entries) but above what one group needs.
    let (base, rooms) = load_spec(&generator::bigstate(0.1, 7));
    let mut free = base.clone();
    let want = compress(&mut free, &rooms[0], opts("100,50,25", 500));
    let peak = want.memory_peak as usize;
    for limit in [peak / 10 * 9, peak / 20 * 19] {
        let mut s = base.clone();
        let mut o = opts("100,50,25", 500);
        o.memory_limit = limit;
        let got = engine::compress_room(&mut s, &rooms[0], o, 0, &mut |_, _| {}).unwrap();
        assert!(got.memory_peak as usize <= limit);
        assert!(
            got.slices > want.slices,
            "limit {limit}: {} slices, as many as unlimited",
            got.slices
        );
        assert_eq!(
            (got.rows_after, got.groups_changed),
            (want.rows_after, want.groups_changed)
        );
        assert!(s.tables == free.tables, "limit {limit}: other rows written");
        check_invariants(&base, &s, 175);
    }
}

/// The caches kept between slices (the string dictionary keeps every string it has
/// seen) are capped near one slice's working set: a room twice as long, of the same
/// state, holds no more. Without the cap the second room's peak is twice the first's.
#[test]
fn a_room_twice_as_long_holds_no_more() {
    let peak = |groups: usize| {
        let mut s = MemStore::default();
        linear_room(&mut s, "!long:hs", 1, groups);
        let sum = compress(&mut s, "!long:hs", opts("100,50,25", 500));
        assert_eq!(sum.state_groups, groups as u64);
        sum.memory_peak
    };
    let (long, longer) = (peak(120_000), peak(240_000));
    assert!(
        longer <= long + long / 20,
        "peak {longer} bytes over 240,000 groups, {long} over 120,000"
    );
}

#[test]
fn a_group_that_cannot_fit_alone_fails_with_nothing_written() {
    let (base, rooms) = load_spec(&generator::bigstate(0.05, 7));
    let room = &rooms[0];
    let mut s = base.clone();
    let mut o = opts("100,50,25", 500);
    o.memory_limit = 64 << 10;
    let err = engine::compress_room(&mut s, room, o.clone(), 0, &mut |_, _| {}).unwrap_err();
    match &err {
        Error::MemoryLimit {
            group: Some(_),
            needed,
            limit,
        } => assert!(needed > limit && *limit == 64 << 10),
        e => panic!("expected MemoryLimit, got {e:?}"),
    }
    assert!(err.to_string().contains("memory limit of 64 kB"), "{err}");
    assert!(s.tables == base.tables, "compress_room wrote");

    // The scheduled path too.
    let progress = Progress {
        last_compressed: 0,
        levels: Levels::new(&o.levels),
    };
    let limits = ChunkLimits {
        chunk_size: 500,
        upto: i64::MAX,
        min_saved_rows: 0,
        memory_limit: 64 << 10,
    };
    let err = compress_chunk(&mut s, room, &progress, limits, Carried::default()).unwrap_err();
    assert!(matches!(err, Error::MemoryLimit { .. }), "{err:?}");
    assert!(s.tables == base.tables, "compress_chunk wrote");

    // And the default limit is plenty for it.
    let mut o = opts("100,50,25", 500);
    o.memory_limit = DEFAULT_MEMORY_LIMIT;
    engine::compress_room(&mut s, room, o, 0, &mut |_, _| {}).unwrap();
    check_invariants(&base, &s, 175);
}
