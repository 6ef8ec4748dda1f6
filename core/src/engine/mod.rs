//! The one rewrite path: load a slice → resolve → plan → verify → write → read back.
//!
//! - `run`: a `Run` of one room, the step all callers share.
//! - `room`: `compress_room`, the whole room (or part of it) in one atomic unit.
//! - `chunk`: `compress_chunk`, one chunk from saved progress, as the background worker
//!   and `compress_database` do.
//! - `memory`: the `MemoryBudget` every step is held to (`Options::memory_limit`).
//! - `phases`: where the time goes (load, resolve, plan, verify, write, read back).
//!
//! Memory: a step reads its chunk in slices sized to the budget. What a run keeps
//! between slices (the string dictionary, the last slice's nodes as a cache, the
//! placements) is charged to the same budget and shed before a slice would not fit;
//! a slice that still does not fit is retried smaller, down to one group, and a group
//! that does not fit alone fails the run with `Error::MemoryLimit`, nothing written.

mod chunk;
pub mod memory;
pub mod phases;
mod room;
mod run;

pub use chunk::{
    compress_chunk, ChunkLimits, ChunkOutcome, ChunkResult, Progress, MAX_CHUNK_GROWTH,
};
pub use memory::MemoryBudget;
pub use phases::{Phase, Phases};
pub use room::{compress_room, plan_room};
pub use run::{Carried, Checkpoint, Run};

use crate::error::{Error, Result};
use crate::levels::LevelSpec;
use crate::model::GroupId;
use crate::planner::SkipReason;

/// Guard against corrupt chains when resolving a group from the database. Synapse
/// writes chains under 100 hops and compression keeps them within the level sums.
pub const MAX_RESOLVE_HOPS: usize = 20_000;
/// The longest chain (hops) Synapse writes: a delta only on a predecessor whose chain
/// has fewer than 100 groups (its `MAX_STATE_DELTA_HOPS`), so at most 99 hops.
pub const SYNAPSE_MAX_HOPS: u32 = 99;
/// Largest chunk accepted (groups per chunk).
pub const MAX_CHUNK_SIZE: usize = 100_000;
/// `Options::memory_limit` when the caller has no setting (bytes).
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

#[derive(Clone, Debug)]
pub struct Options {
    pub levels: LevelSpec,
    /// Groups per chunk: in the worker, transaction length (memory is bounded by
    /// `memory_limit`, which splits a chunk into slices as it needs).
    pub chunk_size: usize,
    pub dry_run: bool,
    /// Only groups with a higher id (a fresh level state starts there).
    pub after_group: Option<GroupId>,
    /// At most this many groups.
    pub max_groups: Option<i64>,
    /// Bytes the engine may hold at once (see `memory`).
    pub memory_limit: usize,
    /// The planner's recent choice for snapshot groups (see `planner`). Always on in
    /// the extension; tests turn it off to check that everything else is independent
    /// of chunk and slice boundaries, as the recent choice alone is not.
    pub recent_choice: bool,
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(Error::InvalidArgument { name, reason });
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return bad(
                "chunk_size",
                format!("must be between 1 and {MAX_CHUNK_SIZE}"),
            );
        }
        if let Some(a) = self.after_group {
            if a < 0 {
                return bad("after_group", format!("{a} is negative"));
            }
        }
        if let Some(m) = self.max_groups {
            if m < 1 {
                return bad("max_groups", format!("{m} is not positive"));
            }
        }
        if self.memory_limit == 0 {
            return bad("memory_limit", "must be positive".into());
        }
        Ok(())
    }
}

/// Why a run wrote nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotWritten {
    DryRun,
    NothingToChange,
    /// The rewrite would not remove rows (`saved` may be negative).
    WouldNotSave {
        saved: i64,
    },
    BelowMinimum {
        saved: i64,
        minimum: i64,
    },
    /// Synapse held a lock the run needed, and the caller's transaction already held
    /// locks of an earlier run: waiting could have closed a deadlock with Synapse's
    /// deletion, so the run gave up before writing (the transaction's earlier work is
    /// kept).
    LockRefused,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub room_id: String,
    pub state_groups: u64,
    pub groups_changed: u64,
    pub groups_skipped: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub forced_snapshots: u64,
    /// Longest predecessor chain (hops) of a processed group after the run.
    pub max_chain_after: u32,
    pub dry_run: bool,
    pub written: bool,
    pub not_written: Option<NotWritten>,
    pub chunks: u64,
    /// Slices the chunks were read in (more than `chunks` when memory was tight).
    pub slices: u64,
    /// The most bytes the run's memory accounting held at once (≤ the limit).
    pub memory_peak: u64,
    pub elapsed_ms: u64,
    /// Where the run's time went (`elapsed_ms` less these is bookkeeping).
    pub phases: Phases,
    /// Where a written run left the room, to continue from (saved like the worker's).
    pub end: Option<Progress>,
}

impl Summary {
    pub fn rows_saved(&self) -> i64 {
        self.rows_before as i64 - self.rows_after as i64
    }
}

/// What one chunk did.
#[derive(Clone, Debug, Default)]
pub struct ChunkReport {
    pub first: GroupId,
    pub last: GroupId,
    pub groups: u64,
    pub changed: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub skipped: Vec<(GroupId, SkipReason)>,
    /// Every group's plan, in id order, when the run records them (`Run::record_plan`).
    pub plan: Vec<GroupPlan>,
    /// The chunk's groups stored as full snapshots (no predecessor) once its rewrites
    /// are written, ascending: what the scheduled runs record as snapshots they left,
    /// so they are not mistaken for groups Synapse de-deltaed later.
    pub snapshots: Vec<GroupId>,
    /// The chunk's groups that were full snapshots as loaded (what stays if the
    /// chunk's writes are undone).
    pub stored_snapshots: Vec<GroupId>,
    /// The longest stored chain (hops) of the chunk's groups (those with a
    /// well-defined state) before the chunk's writes: what undoing them would leave.
    pub max_stored_depth: u32,
}

impl ChunkReport {
    /// Add the report of the next slice of the same chunk.
    fn extend(&mut self, next: ChunkReport) {
        if self.groups == 0 {
            self.first = next.first;
        }
        self.last = next.last;
        self.groups += next.groups;
        self.changed += next.changed;
        self.rows_before += next.rows_before;
        self.rows_after += next.rows_after;
        self.skipped.extend(next.skipped);
        self.plan.extend(next.plan);
        self.snapshots.extend(next.snapshots);
        self.stored_snapshots.extend(next.stored_snapshots);
        self.max_stored_depth = self.max_stored_depth.max(next.max_stored_depth);
    }
}

/// What a run does, or would do, with one group: the rows of `plan_room`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlan {
    pub group: GroupId,
    /// The stored predecessor (the first one, for a group with several).
    pub old_prev: Option<GroupId>,
    /// The predecessor after the run (the stored one for kept and skipped groups).
    pub new_prev: Option<GroupId>,
    pub rows_before: u64,
    pub rows_after: u64,
    /// Hops to a snapshot in the new tree; `None` for a skipped group (left as stored).
    pub depth: Option<u32>,
    pub action: PlanAction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanAction {
    /// Left as stored: its predecessor and delta are already the plan's.
    Kept,
    /// A new predecessor and delta (`forced_snapshot`: the levels asked for a
    /// predecessor but no usable base was found, so it becomes a full snapshot).
    Rewritten { forced_snapshot: bool },
    /// Left as stored and never used as a base.
    Skipped(SkipReason),
}

impl PlanAction {
    /// `kept`, `rewritten` or `skipped`.
    pub fn name(&self) -> &'static str {
        match self {
            PlanAction::Kept => "kept",
            PlanAction::Rewritten { .. } => "rewritten",
            PlanAction::Skipped(_) => "skipped",
        }
    }
}

impl GroupPlan {
    /// Why, in words, for an admin reading the plan.
    pub fn reason(&self) -> String {
        match &self.action {
            PlanAction::Kept => match self.old_prev {
                Some(p) => format!("already a delta from {p} as the levels place it"),
                None => "already a snapshot where the levels start one".into(),
            },
            PlanAction::Rewritten {
                forced_snapshot: true,
            } => "no usable base group: stored as a full snapshot".into(),
            PlanAction::Rewritten { .. } => match self.new_prev {
                Some(p) => format!(
                    "delta from {p}: {} rows instead of {}",
                    self.rows_after, self.rows_before
                ),
                None => format!(
                    "a level starts here: a snapshot of {} rows instead of {}",
                    self.rows_after, self.rows_before
                ),
            },
            PlanAction::Skipped(why) => why.to_string(),
        }
    }
}
