//! Where a run's time goes, by phase: what `make bench` breaks down and the extension
//! logs at DEBUG1. The store's calls are timed as load, write and read back (`Timed`
//! wraps a store); the engine's own work as resolve, plan and verify (a section's wall
//! time less the store calls made inside it, see `Section`). What neither covers (the
//! callers' bookkeeping) is what is left of the caller's wall time.

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::hash::FxHashSet;
use crate::model::{GroupId, RawGroup};
use crate::store::{Chain, Chunk, Rewrite, RoomExtent, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the state tables: chunks, chains, hop counts, extents, tangles.
    Load,
    /// Resolving each group's stored state from its predecessor's.
    Resolve,
    /// Choosing each group's new predecessor and delta.
    Plan,
    /// Checking every rewrite against the stored state, before and after writing.
    Verify,
    /// Writing the rewrites (and opening and closing their atomic unit).
    Write,
    /// Reading the written rows back.
    ReadBack,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Load,
        Phase::Resolve,
        Phase::Plan,
        Phase::Verify,
        Phase::Write,
        Phase::ReadBack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Resolve => "resolve",
            Phase::Plan => "plan",
            Phase::Verify => "verify",
            Phase::Write => "write",
            Phase::ReadBack => "read back",
        }
    }

    /// The phases the store's calls take.
    fn is_store(self) -> bool {
        matches!(self, Phase::Load | Phase::Write | Phase::ReadBack)
    }
}

/// Time spent per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    nanos: [u64; Phase::ALL.len()],
}

impl Phases {
    pub fn add(&mut self, phase: Phase, d: Duration) {
        let n = &mut self.nanos[phase as usize];
        *n = n.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn get(&self, phase: Phase) -> Duration {
        Duration::from_nanos(self.nanos[phase as usize])
    }

    pub fn total(&self) -> Duration {
        Phase::ALL.iter().map(|&p| self.get(p)).sum()
    }

    /// Time in the store's calls.
    fn store_total(&self) -> Duration {
        Phase::ALL
            .iter()
            .filter(|p| p.is_store())
            .map(|&p| self.get(p))
            .sum()
    }

    /// The phases as `Display` lists them, then `other`: what of `total` (a caller's
    /// wall time) went elsewhere, its bookkeeping.
    pub fn with_other(&self, total: Duration) -> String {
        let other = total.saturating_sub(self.total()).as_secs_f64() * 1e3;
        format!("{self}, other {other:.1} ms")
    }

    pub fn merge(&mut self, other: &Phases) {
        for p in Phase::ALL {
            self.add(p, other.get(p));
        }
    }
}

impl fmt::Display for Phases {
    /// `load 1.2 ms, resolve 0.3 ms, ...`: every phase, in milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in Phase::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let ms = self.get(*p).as_secs_f64() * 1e3;
            write!(f, "{sep}{} {ms:.1} ms", p.name())?;
        }
        Ok(())
    }
}

/// The engine's own work between two points: wall time less the store's calls timed
/// meanwhile (a resolve may read a chain, a plan may look up a base).
pub struct Section {
    started: Instant,
    store_before: Duration,
}

impl Section {
    pub fn start(timed: &Timed<'_>) -> Section {
        Section {
            started: Instant::now(),
            store_before: timed.phases.store_total(),
        }
    }

    pub fn end(self, timed: &mut Timed<'_>, phase: Phase) {
        let store = timed.phases.store_total().saturating_sub(self.store_before);
        let own = self.started.elapsed().saturating_sub(store);
        timed.phases.add(phase, own);
    }
}

/// A store whose calls are timed into `phases`.
pub struct Timed<'a> {
    store: &'a mut dyn Store,
    pub phases: Phases,
}

impl<'a> Timed<'a> {
    pub fn new(store: &'a mut dyn Store) -> Timed<'a> {
        Timed {
            store,
            phases: Phases::default(),
        }
    }

    /// The store itself, for calls timed elsewhere (a `Run::step` times its own).
    pub fn inner(&mut self) -> &mut dyn Store {
        &mut *self.store
    }

    fn timed<T>(&mut self, phase: Phase, f: impl FnOnce(&mut dyn Store) -> T) -> T {
        let started = Instant::now();
        let out = f(&mut *self.store);
        self.phases.add(phase, started.elapsed());
        out
    }
}

impl Store for Timed<'_> {
    fn room_extent(&mut self, room: &str) -> Result<RoomExtent> {
        self.timed(Phase::Load, |s| s.room_extent(room))
    }

    fn count_groups(&mut self, room: &str, after: GroupId, upto: GroupId) -> Result<u64> {
        self.timed(Phase::Load, |s| s.count_groups(room, after, upto))
    }

    fn load_chunk(
        &mut self,
        room: &str,
        after: GroupId,
        upto: GroupId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Chunk> {
        self.timed(Phase::Load, |s| {
            s.load_chunk(room, after, upto, limit, max_bytes)
        })
    }

    fn load_chain(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<Chain> {
        self.timed(Phase::Load, |s| s.load_chain(group, max_hops, max_bytes))
    }

    fn load_chain_above(
        &mut self,
        group: GroupId,
        max_hops: usize,
        max_bytes: usize,
        known: &dyn Fn(GroupId) -> bool,
    ) -> Result<Chain> {
        self.timed(Phase::Load, |s| {
            s.load_chain_above(group, max_hops, max_bytes, known)
        })
    }

    fn chain_hops(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<usize> {
        self.timed(Phase::Load, |s| s.chain_hops(group, max_hops, max_bytes))
    }

    fn tangled(&mut self, room: &str) -> Result<FxHashSet<GroupId>> {
        self.timed(Phase::Load, |s| s.tangled(room))
    }

    fn write_chunk(&mut self, room: &str, rewrites: &[Rewrite]) -> Result<()> {
        self.timed(Phase::Write, |s| s.write_chunk(room, rewrites))
    }

    fn read_back(&mut self, groups: &[GroupId]) -> Result<Vec<RawGroup>> {
        self.timed(Phase::ReadBack, |s| s.read_back(groups))
    }

    fn begin_atomic(&mut self) -> Result<()> {
        self.timed(Phase::Write, |s| s.begin_atomic())
    }

    fn end_atomic(&mut self, keep: bool) -> Result<()> {
        self.timed(Phase::Write, |s| s.end_atomic(keep))
    }

    fn check_interrupts(&mut self) {
        self.store.check_interrupts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_merge_and_print() {
        let mut a = Phases::default();
        a.add(Phase::Load, Duration::from_millis(3));
        a.add(Phase::Plan, Duration::from_micros(1500));
        let mut b = Phases::default();
        b.add(Phase::Load, Duration::from_millis(2));
        b.merge(&a);
        assert_eq!(b.get(Phase::Load), Duration::from_millis(5));
        assert_eq!(b.total(), Duration::from_micros(6500));
        assert_eq!(b.store_total(), Duration::from_millis(5));
        assert_eq!(
            b.to_string(),
            "load 5.0 ms, resolve 0.0 ms, plan 1.5 ms, verify 0.0 ms, write 0.0 ms, read back 0.0 ms"
        );
        assert!(b
            .with_other(Duration::from_millis(10))
            .ends_with("read back 0.0 ms, other 3.5 ms"));
        // A total below the phases' (clocks read at different points) is no negative.
        assert!(b.with_other(Duration::ZERO).ends_with("other 0.0 ms"));
    }
}
