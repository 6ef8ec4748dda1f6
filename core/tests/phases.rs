//! Time by phase: every store call lands in its phase, and no time is counted twice
//! (a chain read while resolving is load, not resolve). The store below sleeps a known
//! time per call, so each phase has a floor; the phases together never exceed the
//! caller's wall time, whatever the machine's speed.

mod common;
use common::*;

use std::time::{Duration, Instant};

use synapse_compress_core::engine::{
    compress_chunk, Carried, ChunkLimits, ChunkOutcome, Phase, Phases, Progress,
    DEFAULT_MEMORY_LIMIT,
};
use synapse_compress_core::store::Store;
use synapse_compress_core::{LevelSpec, Levels};
use synapse_compress_testkit::memstore::{Call, MemStore, Observed};

const LOAD: Duration = Duration::from_millis(3);
const WRITE: Duration = Duration::from_millis(4);
const READ_BACK: Duration = Duration::from_millis(2);

/// The calls a slowed store took, each with its known sleep.
#[derive(Default)]
struct Calls {
    loads: u32,
    writes: u32,
    read_backs: u32,
}

impl Calls {
    /// A MemStore whose reads, writes and read-backs each sleep a known time.
    fn slow<'a>(&'a mut self, store: &'a mut MemStore) -> impl Store + 'a {
        Observed {
            inner: store,
            observe: move |call, _| match call {
                Call::BeginAtomic | Call::EndAtomic => {}
                Call::WriteChunk => {
                    self.writes += 1;
                    std::thread::sleep(WRITE);
                }
                Call::ReadBack => {
                    self.read_backs += 1;
                    std::thread::sleep(READ_BACK);
                }
                _ => {
                    self.loads += 1;
                    std::thread::sleep(LOAD);
                }
            },
        }
    }

    /// The least each phase must show.
    fn floors(&self) -> [(Phase, Duration); 3] {
        [
            (Phase::Load, LOAD * self.loads),
            (Phase::Write, WRITE * self.writes),
            (Phase::ReadBack, READ_BACK * self.read_backs),
        ]
    }
}

fn check(calls: &Calls, phases: &Phases, wall: Duration) {
    assert!(calls.loads > 0 && calls.writes > 0 && calls.read_backs > 0);
    for (phase, floor) in calls.floors() {
        assert!(
            phases.get(phase) >= floor,
            "{}: {:?} < {floor:?} ({phases})",
            phase.name(),
            phases.get(phase)
        );
    }
    for phase in [Phase::Resolve, Phase::Plan, Phase::Verify] {
        assert!(
            phases.get(phase) > Duration::ZERO,
            "{} not timed",
            phase.name()
        );
    }
    // Each call and section is a disjoint part of the call: counted once, the phases
    // fit in its wall time (a chain read while resolving counted twice would not).
    assert!(phases.total() <= wall, "{phases} exceeds {wall:?}");
}

#[test]
fn compress_room_times_every_phase_once() {
    let mut mem = MemStore::default();
    linear_room(&mut mem, "!r:hs", 1, 450);
    let mut calls = Calls::default();
    let started = Instant::now();
    let summary = synapse_compress_core::engine::compress_room(
        &mut calls.slow(&mut mem),
        "!r:hs",
        opts("100,50,25", 200),
        0,
        &mut |_, _| {},
    )
    .expect("compress");
    let wall = started.elapsed();
    assert!(summary.written && summary.groups_changed > 0, "{summary:?}");
    check(&calls, &summary.phases, wall);
}

#[test]
fn compress_chunk_times_every_phase_once() {
    let mut mem = MemStore::default();
    linear_room(&mut mem, "!r:hs", 1, 450);
    let progress = Progress {
        last_compressed: 0,
        levels: Levels::new(&LevelSpec::parse("100,50,25").unwrap()),
    };
    let limits = ChunkLimits {
        chunk_size: 300,
        memory_limit: DEFAULT_MEMORY_LIMIT,
        upto: 300,
        min_saved_rows: 1,
    };
    let mut calls = Calls::default();
    let started = Instant::now();
    let r = compress_chunk(
        &mut calls.slow(&mut mem),
        "!r:hs",
        &progress,
        limits,
        Carried::default(),
    )
    .expect("chunk");
    let wall = started.elapsed();
    check(&calls, &r.phases, wall);
    assert!(
        matches!(r.outcome, ChunkOutcome::Written(_)),
        "{:?}",
        r.outcome
    );
    // The next chunk reads its level heads' hops (a load before its run starts).
    let limits = ChunkLimits {
        upto: 450,
        ..limits
    };
    let mut calls = Calls::default();
    let started = Instant::now();
    let r = compress_chunk(
        &mut calls.slow(&mut mem),
        "!r:hs",
        &r.progress,
        limits,
        r.carried,
    )
    .expect("chunk");
    let wall = started.elapsed();
    check(&calls, &r.phases, wall);
}
