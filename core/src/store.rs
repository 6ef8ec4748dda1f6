//! What the engine needs from a database, as a trait: the extension implements it over
//! SPI (`src/store.rs`), `synapse_compress_testkit::memstore` in memory for tests.
//!
//! Every method reads or writes *stored* data as Synapse's own read query sees it;
//! the engine never assumes more than this trait says.

use crate::error::Result;
use crate::hash::FxHashSet;
use crate::model::{GroupId, RawGroup, StateRow};

/// What the database knows of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomExtent {
    /// Neither state groups nor a `rooms` row (where that table exists).
    Unknown,
    /// A `rooms` row, but no state groups.
    NoGroups,
    /// `max_id`: the newest group now; a run leaves alone groups created after it.
    Groups { max_id: GroupId },
}

/// A run of a room's groups in ascending id order, with edges and rows.
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    pub groups: Vec<RawGroup>,
    /// Groups that must be neither rewritten nor chosen as a predecessor: pending
    /// deletion (Synapse may delete them any minute) or being persisted.
    pub frozen: FxHashSet<GroupId>,
}

/// The stored predecessor chain of one group, the group first, following
/// `state_group_edges` while each group has exactly one edge. Stops early (and the
/// engine reports it) on a repeated group, several edges, or `max_hops` exceeded.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    pub groups: Vec<RawGroup>,
    /// Those of its groups pending deletion or being persisted.
    pub frozen: FxHashSet<GroupId>,
}

/// The new edge and rows of one rewritten group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub group: GroupId,
    pub prev: Option<GroupId>,
    pub rows: Vec<StateRow>,
}

pub trait Store {
    fn room_extent(&mut self, room: &str) -> Result<RoomExtent>;
    /// How many of the room's groups have `after < id <= upto`.
    fn count_groups(&mut self, room: &str, after: GroupId, upto: GroupId) -> Result<u64>;
    /// Up to `limit` of the room's groups with `after < id <= upto`, ascending. An
    /// implementation beside a live Synapse locks them here, before reading them.
    ///
    /// `max_bytes` is what the engine can still hold: a store counts the rows it reads
    /// with `engine::memory::LoadAllowance` and fails with `Error::MemoryLimit` as soon
    /// as they would pass it, reading rows `LOAD_BATCH_ROWS` at a time.
    fn load_chunk(
        &mut self,
        room: &str,
        after: GroupId,
        upto: GroupId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Chunk>;
    /// `max_bytes` as for `load_chunk`.
    fn load_chain(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<Chain>;
    /// As `load_chain`, but ending above the first group after `group` for which
    /// `known` holds: the last group returned then has that group as its predecessor,
    /// and its rows are not read (the engine already resolved it). A store can read
    /// just the groups above it; this default reads the whole chain and drops the rest.
    fn load_chain_above(
        &mut self,
        group: GroupId,
        max_hops: usize,
        max_bytes: usize,
        known: &dyn Fn(GroupId) -> bool,
    ) -> Result<Chain> {
        let mut chain = self.load_chain(group, max_hops, max_bytes)?;
        if let Some(i) = chain.groups.iter().skip(1).position(|g| known(g.id)) {
            chain.groups.truncate(i + 1);
        }
        Ok(chain)
    }
    /// Hops on the chain `load_chain` would return (its groups less one). A store can
    /// count them from the edges alone; this default reads the rows too.
    fn chain_hops(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<usize> {
        Ok(self
            .load_chain(group, max_hops, max_bytes)?
            .groups
            .len()
            .saturating_sub(1))
    }
    /// Every group reached over stored edges, at any depth, from a malformed group of
    /// the room (one with several predecessors, or with one not lower than itself) or
    /// from a group outside the room with an edge into it. Synapse resolves a
    /// malformed group from all the groups it reaches, highest id first, so rewriting
    /// any of them could change its state even though each keeps its own; and a group
    /// of another room may be malformed in ways this room's scan cannot see. The
    /// engine asks once per run; Synapse writes no such edges, so this is almost
    /// always empty.
    fn tangled(&mut self, room: &str) -> Result<FxHashSet<GroupId>>;
    /// Replace the edge and rows of each rewritten group, set-based. A chosen
    /// predecessor deleted, pending deletion or being persisted by now (the engine may
    /// have read it earlier) fails the call with `Error::Concurrent`, nothing written.
    fn write_chunk(&mut self, room: &str, rewrites: &[Rewrite]) -> Result<()>;
    /// The edges and rows stored now for `groups` (to check a write landed as planned).
    fn read_back(&mut self, groups: &[GroupId]) -> Result<Vec<RawGroup>>;
    /// Start a unit whose writes can be undone as a whole (a subtransaction).
    fn begin_atomic(&mut self) -> Result<()>;
    /// End the unit: keep its writes, or undo them all.
    fn end_atomic(&mut self, keep: bool) -> Result<()>;
    /// Give the database a chance to cancel a long run (query cancel, statement_timeout).
    fn check_interrupts(&mut self) {}
}
