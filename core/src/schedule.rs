//! The run policy of scheduled compression, with no PostgreSQL in it: what a chunk's
//! result means (its [`Outcome`], whether the room is done), how long a failed room
//! waits ([`retry_delay`]), how the chunk size adapts ([`adapt_chunk_size`]), and when
//! a run stops ([`Budget`], [`RunEnd`]).
//!
//! The pgrx layer (`src/schedule.rs`, `src/worker.rs`) records these in
//! `synapse_compress.runs` and `synapse_compress.room_queue`; it is meant to use this
//! module instead of its own copies:
//!
//! - `run_chunk`: `Step::outcome` becomes an [`Outcome`] (SQL gets `outcome.as_str()`,
//!   the worker tests `step.outcome == Outcome::NoWork` or `outcome.ends_run()`); after
//!   `compress_chunk`, `Outcome::of_chunk(&r.outcome)` and
//!   `room_done(&r.outcome, limits.chunk_size)` replace the `match` on the report and
//!   `report.is_none_or(..)`; `limits.chunk_size` is `chunk_limit(row.chunk_size)`.
//! - the failure branch: with the queue row's `error_count` before this failure (the
//!   row is locked by `pick_room`'s `FOR UPDATE`), bind
//!   `next_retry = now() + make_interval(secs => retry_delay(error_count).as_secs())`
//!   instead of the `least(interval '1 minute' * power(2, ..), interval '1 day')`
//!   expression.
//! - `adapt_chunk_size(row.chunk_size, elapsed_ms, gucs::TARGET_CHUNK_TIME.get().into())`
//!   replaces the private function of the same name.
//! - `end_run` parses its `outcome` argument with [`RunEnd::parse`]; the worker's loop
//!   breaks with a [`RunEnd`] and tests `Budget::exhausted`.

use std::time::Duration;

use crate::engine::MAX_CHUNK_SIZE;
use crate::error::{Error, Result};
use crate::incremental::ChunkOutcome;

/// What one scheduled step did (`synapse_compress.run_chunk`'s `outcome` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The chunk's rewrite was kept (or nothing in it needed rewriting).
    Written,
    /// The chunk was undone: it would not have removed enough rows.
    NotSaved,
    /// The room had no group left to compress up to the run's limit.
    RoomDone,
    /// The chunk failed; the error is recorded on the room, which waits
    /// [`retry_delay`] before it is tried again.
    Failed,
    /// No room has work: the run is over.
    NoWork,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Written,
        Outcome::NotSaved,
        Outcome::RoomDone,
        Outcome::Failed,
        Outcome::NoWork,
    ];

    /// The string SQL sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::NotSaved => "not_saved",
            Outcome::RoomDone => "room_done",
            Outcome::Failed => "failed",
            Outcome::NoWork => "no_work",
        }
    }

    pub fn parse(text: &str) -> Result<Outcome> {
        parse_one(&Outcome::ALL, Outcome::as_str, "outcome", text)
    }

    /// The outcome of a chunk the core ran without error.
    pub fn of_chunk(chunk: &ChunkOutcome) -> Outcome {
        match chunk {
            ChunkOutcome::Done => Outcome::RoomDone,
            ChunkOutcome::Written(_) => Outcome::Written,
            ChunkOutcome::NotSaved { .. } => Outcome::NotSaved,
        }
    }

    /// Whether the run stops after this step.
    pub fn ends_run(self) -> bool {
        self == Outcome::NoWork
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ends (`synapse_compress.runs.outcome`; `running` and `crashed` are set by
/// SQL only, never passed to `end_run`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunEnd {
    /// No room had work left.
    Done,
    /// The time or chunk budget ran out.
    Budget,
    /// Compression is paused or disabled.
    Paused,
    /// The worker was told to stop.
    Stopped,
    Failed,
}

impl RunEnd {
    pub const ALL: [RunEnd; 5] = [
        RunEnd::Done,
        RunEnd::Budget,
        RunEnd::Paused,
        RunEnd::Stopped,
        RunEnd::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunEnd::Done => "done",
            RunEnd::Budget => "budget",
            RunEnd::Paused => "paused",
            RunEnd::Stopped => "stopped",
            RunEnd::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Result<RunEnd> {
        parse_one(&RunEnd::ALL, RunEnd::as_str, "outcome", text)
    }
}

impl std::fmt::Display for RunEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_one<T: Copy>(
    all: &[T],
    as_str: fn(T) -> &'static str,
    name: &'static str,
    text: &str,
) -> Result<T> {
    all.iter()
        .copied()
        .find(|&v| as_str(v) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&v| as_str(v)).collect();
            Error::InvalidArgument {
                name,
                reason: format!("{text:?} is not one of {}", names.join(", ")),
            }
        })
}

/// Whether the room is done after a chunk: no chunk was left, or the chunk was not
/// full (fewer groups than asked for: the room has none left up to the run's limit).
pub fn room_done(chunk: &ChunkOutcome, chunk_size: usize) -> bool {
    match chunk {
        ChunkOutcome::Done => true,
        ChunkOutcome::Written(report) | ChunkOutcome::NotSaved { report, .. } => {
            (report.groups as usize) < chunk_size
        }
    }
}

/// The chunk size a run asks the core for: the stored size within `1..=MAX_CHUNK_SIZE`.
pub fn chunk_limit(stored: i32) -> usize {
    stored.clamp(1, MAX_CHUNK_SIZE as i32) as usize
}

/// Smallest size [`adapt_chunk_size`] moves a chunk to.
pub const MIN_ADAPTED_CHUNK_SIZE: i32 = 10;

/// With a target chunk time (`synapse_compress.target_chunk_time`, 0: off), move the
/// chunk size halfway towards the size that would have taken that long (halfway: one
/// slow chunk must not swing it), within `MIN_ADAPTED_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
pub fn adapt_chunk_size(size: i32, elapsed_ms: i64, target_ms: i64) -> i32 {
    if target_ms == 0 || elapsed_ms == 0 {
        return size;
    }
    let ideal = size as f64 * target_ms as f64 / elapsed_ms as f64;
    (((size as f64 + ideal) / 2.0).round() as i64)
        .clamp(MIN_ADAPTED_CHUNK_SIZE as i64, MAX_CHUNK_SIZE as i64) as i32
}

/// Longest wait before a failed room is tried again.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a room waits after a failure, given how many failures in a row it had
/// before this one: 1, 2, 4, ... minutes, at most [`MAX_RETRY_DELAY`] (a day).
pub fn retry_delay(errors_before: u32) -> Duration {
    // 2^20 minutes is far beyond a day: the exponent stops there (no overflow).
    let minutes = 1u64 << errors_before.min(20);
    Duration::from_secs(60 * minutes).min(MAX_RETRY_DELAY)
}

/// A run's budget (`synapse_compress.max_run_time`, `max_run_chunks`, or
/// `compress_database`'s arguments); `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub time: Option<Duration>,
    pub chunks: Option<u64>,
}

impl Budget {
    /// Whether a run that has taken `elapsed` and done `chunks` chunks must stop before
    /// its next chunk.
    pub fn exhausted(&self, elapsed: Duration, chunks: u64) -> bool {
        self.time.is_some_and(|t| elapsed >= t) || self.chunks.is_some_and(|c| chunks >= c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChunkReport;

    #[test]
    fn outcomes_round_trip_their_sql_strings() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()).unwrap(), o);
            assert_eq!(o.to_string(), o.as_str());
        }
        for r in RunEnd::ALL {
            assert_eq!(RunEnd::parse(r.as_str()).unwrap(), r);
        }
        // The strings the SQL CHECK constraints and callers use, exactly.
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            ["written", "not_saved", "room_done", "failed", "no_work"]
        );
        let ends: Vec<&str> = RunEnd::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(ends, ["done", "budget", "paused", "stopped", "failed"]);
        for bad in ["", "Written", "no work", "running", "crashed", "done "] {
            assert!(Outcome::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "running", "crashed", "no_work", "Done"] {
            assert!(RunEnd::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Outcome::NoWork.ends_run());
        assert!(Outcome::ALL
            .iter()
            .filter(|o| **o != Outcome::NoWork)
            .all(|o| !o.ends_run()));
    }

    fn report(groups: u64) -> ChunkReport {
        ChunkReport {
            groups,
            ..ChunkReport::default()
        }
    }

    #[test]
    fn a_room_is_done_when_a_chunk_is_not_full() {
        assert!(room_done(&ChunkOutcome::Done, 100));
        assert_eq!(Outcome::of_chunk(&ChunkOutcome::Done), Outcome::RoomDone);
        let full = ChunkOutcome::Written(report(100));
        assert!(!room_done(&full, 100));
        assert_eq!(Outcome::of_chunk(&full), Outcome::Written);
        assert!(room_done(&ChunkOutcome::Written(report(99)), 100));
        // A chunk that would not pay is extended past the chunk size before it is
        // given up: more groups than asked for is not done either.
        let undone = ChunkOutcome::NotSaved {
            report: report(800),
            saved: 0,
        };
        assert!(!room_done(&undone, 100));
        assert_eq!(Outcome::of_chunk(&undone), Outcome::NotSaved);
        let last = ChunkOutcome::NotSaved {
            report: report(3),
            saved: -2,
        };
        assert!(room_done(&last, 100));
    }

    #[test]
    fn chunk_limit_clamps_the_stored_size() {
        assert_eq!(chunk_limit(500), 500);
        assert_eq!(chunk_limit(0), 1);
        assert_eq!(chunk_limit(-7), 1);
        assert_eq!(chunk_limit(i32::MAX), MAX_CHUNK_SIZE);
    }

    #[test]
    fn chunk_size_moves_halfway_to_the_target_within_bounds() {
        // Off, or nothing measured: unchanged (even outside the bounds).
        assert_eq!(adapt_chunk_size(500, 1234, 0), 500);
        assert_eq!(adapt_chunk_size(500, 0, 1000), 500);
        assert_eq!(adapt_chunk_size(3, 0, 1000), 3);
        // On target: unchanged.
        assert_eq!(adapt_chunk_size(500, 1000, 1000), 500);
        // Twice too slow: the ideal is 250, halfway is 375.
        assert_eq!(adapt_chunk_size(500, 2000, 1000), 375);
        // Twice too fast: the ideal is 1000, halfway is 750.
        assert_eq!(adapt_chunk_size(500, 500, 1000), 750);
        // Halfway rounds to the nearest: (7 + 7·1000/3) / 2 = 1170.17.
        assert_eq!(adapt_chunk_size(7, 3, 1000), 1170);
        // One very slow chunk: the size at most halves (then the floor).
        assert_eq!(adapt_chunk_size(500, 1_000_000, 1), 250);
        assert_eq!(adapt_chunk_size(12, 1_000_000, 1), MIN_ADAPTED_CHUNK_SIZE);
        // Very fast: up to the ceiling, never past it.
        assert_eq!(
            adapt_chunk_size(MAX_CHUNK_SIZE as i32, 1, 600_000),
            MAX_CHUNK_SIZE as i32
        );
        assert_eq!(adapt_chunk_size(60_000, 1, 600_000), MAX_CHUNK_SIZE as i32);
        // Repeated, it converges on the size that takes the target time.
        let mut size = 100;
        for _ in 0..40 {
            // 2 ms per group, target 1 s: 500 groups.
            size = adapt_chunk_size(size, 2 * size as i64, 1000);
        }
        assert_eq!(size, 500);
    }

    #[test]
    fn retries_back_off_from_a_minute_to_a_day() {
        let minutes: Vec<u64> = (0..12).map(|n| retry_delay(n).as_secs() / 60).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1440]);
        for n in [12, 20, 21, 64, u32::MAX] {
            assert_eq!(retry_delay(n), MAX_RETRY_DELAY, "{n} errors");
        }
        assert!((0..100).all(|n| retry_delay(n) <= retry_delay(n + 1)));
    }

    #[test]
    fn budgets_stop_a_run_once_reached() {
        let none = Budget::default();
        assert!(!none.exhausted(Duration::from_secs(1 << 40), u64::MAX));
        let b = Budget {
            time: Some(Duration::from_secs(60)),
            chunks: Some(10),
        };
        assert!(!b.exhausted(Duration::from_secs(59), 9));
        assert!(b.exhausted(Duration::from_secs(60), 0));
        assert!(b.exhausted(Duration::ZERO, 10));
        let chunks_only = Budget {
            time: None,
            chunks: Some(1),
        };
        assert!(!chunks_only.exhausted(Duration::from_secs(1 << 40), 0));
        assert!(chunks_only.exhausted(Duration::ZERO, 1));
    }
}
