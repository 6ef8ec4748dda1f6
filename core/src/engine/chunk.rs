//! `compress_chunk`: a room one chunk per transaction, as the background worker and
//! `compress_database` do: each chunk starts from the room's saved progress (the
//! existing tool's `state_compressor_progress` and `state_compressor_state`) and
//! returns the progress to save in the same transaction as its writes, so a crash
//! neither loses nor repeats work.
//!
//! The chunk goes through the same `Run::step` as `compress_room` (load → plan →
//! verify → write → read back); only the bookkeeping around it lives here.

use super::phases::{Phases, Timed};
use super::{Carried, ChunkReport, Options, Run, MAX_RESOLVE_HOPS, SYNAPSE_MAX_HOPS};
use crate::error::Result;
use crate::levels::{Level, Levels};
use crate::model::GroupId;
use crate::store::Store;

/// Where a room's compression stands: every group up to `last_compressed` has been
/// through the compressor, and `levels` describe the tree built so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub last_compressed: GroupId,
    pub levels: Levels,
}

#[derive(Clone, Debug)]
pub enum ChunkOutcome {
    /// No group after `last_compressed` up to the run's limit.
    Done,
    /// Written (or nothing needed writing: `report.changed == 0`).
    Written(ChunkReport),
    /// Undone because it would remove fewer than the minimum (never a room that grows);
    /// the levels restart after it. Never when undoing would leave one of its groups
    /// with a stored chain beyond the bound (see `compress_chunk`).
    NotSaved { report: ChunkReport, saved: i64 },
}

#[derive(Clone, Debug)]
pub struct ChunkResult {
    pub outcome: ChunkOutcome,
    /// Save this with the chunk's writes.
    pub progress: Progress,
    /// The saved levels did not match the stored tree (another tool or a manual
    /// rewrite changed it), so they were restarted before this chunk.
    pub levels_reset: bool,
    /// What to hand to the room's next chunk of the same run.
    pub carried: Carried,
    /// Where the chunk's time went (its whole stretch, see `MAX_CHUNK_GROWTH`).
    pub phases: Phases,
}

/// How far a chunk that would not pay is extended before it is given up.
pub const MAX_CHUNK_GROWTH: usize = 8;

/// What one chunk may do.
#[derive(Clone, Copy, Debug)]
pub struct ChunkLimits {
    pub chunk_size: usize,
    /// Bytes the engine may hold at once (`Options::memory_limit`).
    pub memory_limit: usize,
    /// Leave groups with a higher id alone (those created after the run started).
    pub upto: GroupId,
    /// Undo the chunk unless it removes at least this many rows (at least 1 when it
    /// changes anything).
    pub min_saved_rows: i64,
}

/// Compress the next chunk of `room` after `progress`, atomically: its writes are kept
/// only if they pay off. `carried` is what the room's previous chunk of this run
/// returned, if any (`Carried::default()` otherwise).
pub fn compress_chunk(
    store: &mut dyn Store,
    room: &str,
    progress: &Progress,
    limits: ChunkLimits,
    carried: Carried,
) -> Result<ChunkResult> {
    let mut timed = Timed::new(store);
    let mut phases = Phases::default();
    let mut result = compress_stretch(&mut timed, &mut phases, room, progress, limits, carried);
    phases.merge(&timed.phases);
    if let Ok(r) = result.as_mut() {
        r.phases = phases;
    }
    result
}

/// `compress_chunk`, its calls outside `Run::step` timed by `store`, the runs' own
/// phases added to `phases`.
fn compress_stretch(
    store: &mut Timed<'_>,
    phases: &mut Phases,
    room: &str,
    progress: &Progress,
    limits: ChunkLimits,
    carried: Carried,
) -> Result<ChunkResult> {
    let spec = progress.levels.spec();
    let fresh = Levels::new(&spec);
    let (levels, levels_reset) =
        if heads_match_tree(store, progress.levels.levels(), limits.memory_limit)? {
            (progress.levels.clone(), false)
        } else {
            (fresh.clone(), true)
        };
    // A chunk that would not pay is extended over a longer stretch (up to
    // `MAX_CHUNK_GROWTH` times the size) before it is given up: the level algorithm
    // may spend rows early in a stretch (a new level's first delta) that it saves
    // later (the snapshots Synapse wrote every 100 groups), and giving up restarts the
    // levels, which costs a full snapshot. The same run goes on, one chunk size at a
    // time, in the same atomic unit, as `compress_room` would: nothing is redone, and
    // memory follows the run's slices, not the stretch.
    let opts = Options {
        levels: spec.clone(),
        chunk_size: limits.chunk_size,
        dry_run: false,
        after_group: None,
        max_groups: Some((limits.chunk_size * MAX_CHUNK_GROWTH) as i64),
        memory_limit: limits.memory_limit,
        recent_choice: true,
    };
    let mut run = Run::resume(room, opts, levels, progress.last_compressed, limits.upto)?;
    run.take_over(carried);
    store.begin_atomic()?;
    let mut report = ChunkReport::default();
    let stepped = loop {
        if report.groups > 0 {
            store.check_interrupts();
        }
        let next = if report.groups == 0 {
            run.step(store.inner())
        } else {
            run.step_on(store.inner())
        };
        match next {
            Ok(Some(next)) => {
                let full = next.groups as usize == limits.chunk_size;
                report.extend(next);
                if !full || pays(&report, limits.min_saved_rows) {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    phases.merge(&run.summary.phases);
    let carried = run.carried();
    if let Err(e) = stepped {
        let _ = store.end_atomic(false);
        return Err(e);
    }
    if report.groups == 0 {
        store.end_atomic(false)?;
        return Ok(ChunkResult {
            outcome: ChunkOutcome::Done,
            progress: progress.clone(),
            levels_reset: false,
            carried,
            phases: Phases::default(),
        });
    }
    let saved = report.rows_before as i64 - report.rows_after as i64;
    let paid = pays(&report, limits.min_saved_rows);
    // Undoing would leave the chunk's groups on their stored chains. Earlier chunks
    // may have rewritten the groups those chains run through deeper (up to the
    // level sizes' sum, under a chain Synapse wrote up to 99 hops long), and the
    // progress moves past the chunk: such a chain would stay beyond both bounds
    // for good. Then the chunk's writes are kept, though below the minimum (its
    // chains are verified within the levels' bound).
    let bound = spec.max_hops().max(SYNAPSE_MAX_HOPS);
    let keep = paid || report.max_stored_depth > bound;
    store.end_atomic(keep)?;
    let last_compressed = report.last;
    let (outcome, levels) = if keep {
        (ChunkOutcome::Written(report), run.levels().clone())
    } else {
        (ChunkOutcome::NotSaved { report, saved }, fresh)
    };
    Ok(ChunkResult {
        outcome,
        progress: Progress {
            last_compressed,
            levels,
        },
        levels_reset,
        carried,
        phases: Phases::default(),
    })
}

/// Whether what a chunk did so far is worth keeping: it changed nothing, or removed at
/// least `min_saved_rows` rows (at least one).
fn pays(report: &ChunkReport, min_saved_rows: i64) -> bool {
    let saved = report.rows_before as i64 - report.rows_after as i64;
    report.changed == 0 || saved >= min_saved_rows.max(1)
}

/// Levels guarantee that the head of level i is at most Σ_{j≥i} (length_j − 1) hops
/// deep (less where a base was skipped). A head deeper than that means the stored tree
/// is not the one the levels describe, and continuing could exceed the hop bound.
fn heads_match_tree(store: &mut dyn Store, levels: &[Level], memory_limit: usize) -> Result<bool> {
    for (i, level) in levels.iter().enumerate() {
        let Some(head) = level.head else { continue };
        let bound: u32 = levels[i..]
            .iter()
            .map(|l| l.current_length.saturating_sub(1))
            .sum();
        // A missing or broken head is harmless: the planner will not build on it.
        if store.chain_hops(head, MAX_RESOLVE_HOPS, memory_limit)? > bound as usize {
            return Ok(false);
        }
    }
    Ok(true)
}
