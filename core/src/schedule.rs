//! The run policy of scheduled compression, with no PostgreSQL in it: what a chunk's
//! result means (its [`Outcome`], whether the room is done), how long a failed room
//! waits ([`retry_delay`]), how the chunk size adapts ([`adapt_chunk_size`]), and when
//! a run stops ([`Budget`], [`RunEnd`]), and the time of day the worker may work in
//! ([`Window`], `synapse_compress.window`).
//!
//! The pgrx layer records these in `synapse_compress.runs` and
//! `synapse_compress.room_queue`. Both drivers of a run, the background worker
//! (`src/worker.rs`) and `CALL compress_database()` (`sql/schedule.sql`), ask
//! [`Source::run_end_before_chunk`] at every chunk boundary, through one step function
//! (`src/schedule.rs`: `step`); only their transactions and sleeps differ.

use std::time::Duration;

use crate::engine::ChunkOutcome;
use crate::engine::MAX_CHUNK_SIZE;
use crate::error::{Error, Result};

/// What one chunk of a scheduled run did (`synapse_compress.run_step`'s `outcome` column).
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
    /// `synapse_compress.window` closed: the worker stopped at a chunk boundary.
    Window,
}

impl RunEnd {
    pub const ALL: [RunEnd; 6] = [
        RunEnd::Done,
        RunEnd::Budget,
        RunEnd::Paused,
        RunEnd::Stopped,
        RunEnd::Failed,
        RunEnd::Window,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunEnd::Done => "done",
            RunEnd::Budget => "budget",
            RunEnd::Paused => "paused",
            RunEnd::Stopped => "stopped",
            RunEnd::Failed => "failed",
            RunEnd::Window => "window",
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

/// Who drives a run (`synapse_compress.runs.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The background worker: runs on its own, so it obeys every control.
    Worker,
    /// `CALL compress_database()`: an admin asked for this run now, so it ignores what
    /// governs the worker (`synapse_compress.enabled`, `pause()`, the window) and stops
    /// only on its own budget or when no work is left.
    Procedure,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Worker, Source::Procedure];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Worker => "worker",
            Source::Procedure => "procedure",
        }
    }

    pub fn parse(text: &str) -> Result<Source> {
        parse_one(&Source::ALL, Source::as_str, "source", text)
    }

    /// The run policy at a chunk boundary: how the run ends before its next chunk, or
    /// `None` to go on. The one definition both drivers use.
    pub fn run_end_before_chunk(self, budget: &Budget, at: &Boundary) -> Option<RunEnd> {
        let worker = self == Source::Worker;
        if at.stop_requested {
            Some(RunEnd::Stopped)
        } else if worker && !at.enabled {
            Some(RunEnd::Paused)
        } else if budget.exhausted(at.elapsed, at.chunks) {
            Some(RunEnd::Budget)
        } else if worker && at.paused {
            Some(RunEnd::Paused)
        } else if worker && !at.window_open {
            Some(RunEnd::Window)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run's driver knows at a chunk boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Chunks done so far in this run (failed ones included).
    pub chunks: u64,
    /// The process must stop (SIGTERM to the worker).
    pub stop_requested: bool,
    /// `synapse_compress.enabled`.
    pub enabled: bool,
    /// `synapse_compress.pause()` is in effect.
    pub paused: bool,
    /// `synapse_compress.window` is open (closed when it cannot be read).
    pub window_open: bool,
}

/// Whether the room is done after a chunk: no chunk was left, or the chunk's last
/// step was not full (fewer groups than asked for: the room has none left up to the
/// run's limit). A chunk that did not pay ran on a whole chunk size at a time
/// (`MAX_CHUNK_GROWTH`), so only its last step can be short.
pub fn room_done(chunk: &ChunkOutcome, chunk_size: usize) -> bool {
    match chunk {
        ChunkOutcome::Done => true,
        ChunkOutcome::Written(report) | ChunkOutcome::NotSaved { report, .. } => {
            !(report.groups as usize).is_multiple_of(chunk_size)
        }
    }
}

/// Most rooms one step (one transaction) takes as a batch. A room written uses about
/// three subtransactions that get an id (the chunk's unit, its lock's first try, its
/// atomic write), and a transaction whose subtransaction ids pass 64 overflows
/// PostgreSQL's per-backend cache of them: every other session's snapshots then look
/// them up in `pg_subtrans` until it ends. Each room also holds an advisory lock
/// (the shared lock table is sized for `max_locks_per_transaction`, 64, per backend).
pub const MAX_BATCH_ROOMS: u32 = 16;

/// What a step has done so far, for [`next_in_batch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Rooms (chunks) taken in this step.
    pub rooms: u32,
    /// Groups those chunks loaded.
    pub groups: u64,
}

/// After a chunk, whether the same step (transaction) goes on with another room, and
/// then the most groups that room may have: small rooms share a transaction, so their
/// commit and the step's bookkeeping are paid once, yet a batch holds no more groups
/// (and locks) than one chunk of a large room, `chunk_size`. Only after a chunk that
/// left its room done (`room_done`): a failed chunk ends the step, so its error
/// reaches the driver; a room with groups left is the next step's first.
pub fn next_in_batch(
    last: Outcome,
    room_done: bool,
    batch: Batch,
    chunk_size: usize,
) -> Option<usize> {
    let finished = match last {
        Outcome::Written | Outcome::NotSaved => room_done,
        Outcome::RoomDone => true,
        Outcome::Failed | Outcome::NoWork => false,
    };
    let left = chunk_size.saturating_sub(batch.groups.min(usize::MAX as u64) as usize);
    (finished && batch.rooms < MAX_BATCH_ROOMS && left > 0).then_some(left)
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

/// Minutes in a day: [`Window::contains`] takes a minute of the day below it.
pub const MINUTES_PER_DAY: u32 = 24 * 60;

/// `synapse_compress.window`: the time of day scheduled runs may work in, in the
/// server's time zone. `"01:00-06:00"` is 01:00 up to (not including) 06:00; a start
/// after the end wraps midnight (`"22:00-02:00"`); `""` is always. A start equal to
/// the end is refused as ambiguous (use `""` for always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// `None`: always open.
    span: Option<(u32, u32)>,
}

impl Window {
    /// Always open (the empty setting).
    pub const ALWAYS: Window = Window { span: None };

    /// Parse `HH:MM-HH:MM` (hours 0..23, or 24:00 as an end; minutes 00..59; spaces
    /// around the parts allowed); empty or blank is always.
    pub fn parse(text: &str) -> Result<Window> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Window::ALWAYS);
        }
        let bad = |reason: String| Error::InvalidArgument {
            name: "window",
            reason,
        };
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| bad(format!("{text:?} is not HH:MM-HH:MM")))?;
        let start = parse_time(start, false).map_err(|r| bad(format!("start {r}")))?;
        let end = parse_time(end, true).map_err(|r| bad(format!("end {r}")))?;
        if start == end % MINUTES_PER_DAY {
            return Err(bad(format!(
                "{text:?} starts where it ends; use '' for always"
            )));
        }
        Ok(Window {
            span: Some((start, end)),
        })
    }

    pub fn is_always(&self) -> bool {
        self.span.is_none()
    }

    /// Whether `minute` (minutes since midnight, `0..MINUTES_PER_DAY`) is inside.
    pub fn contains(&self, minute: u32) -> bool {
        match self.span {
            None => true,
            Some((start, end)) if start < end => start <= minute && minute < end,
            Some((start, end)) => minute >= start || minute < end,
        }
    }

    /// Minutes from `minute` until the window is next open: 0 inside it.
    pub fn minutes_until_open(&self, minute: u32) -> u32 {
        match self.span {
            Some((start, _)) if !self.contains(minute) => {
                (start + MINUTES_PER_DAY - minute % MINUTES_PER_DAY) % MINUTES_PER_DAY
            }
            _ => 0,
        }
    }
}

/// `HH:MM` as minutes since midnight; `24:00` only as an end.
fn parse_time(text: &str, is_end: bool) -> std::result::Result<u32, String> {
    let t = text.trim();
    let malformed = || format!("{t:?} is not HH:MM");
    let (h, m) = t.split_once(':').ok_or_else(malformed)?;
    // Hours in one or two ASCII digits, minutes in exactly two.
    let number = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        (lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let (Some(h), Some(m)) = (number(h, 1..=2), number(m, 2..=2)) else {
        return Err(malformed());
    };
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !is_end)) {
        return Err(format!("{t:?} is not a time of day (00:00 to 23:59)"));
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChunkReport;

    fn boundary() -> Boundary {
        Boundary {
            elapsed: Duration::from_secs(10),
            chunks: 3,
            stop_requested: false,
            enabled: true,
            paused: false,
            window_open: true,
        }
    }

    #[test]
    fn the_worker_obeys_every_control_and_the_procedure_only_its_budget() {
        let none = Budget::default();
        let tight = Budget {
            time: Some(Duration::from_secs(10)),
            chunks: None,
        };
        for source in Source::ALL {
            assert_eq!(source.run_end_before_chunk(&none, &boundary()), None);
            let stop = Boundary {
                stop_requested: true,
                ..boundary()
            };
            assert_eq!(
                source.run_end_before_chunk(&none, &stop),
                Some(RunEnd::Stopped)
            );
            assert_eq!(
                source.run_end_before_chunk(&tight, &boundary()),
                Some(RunEnd::Budget)
            );
            assert_eq!(Source::parse(source.as_str()).unwrap(), source);
        }
        let cases = [
            (
                Boundary {
                    enabled: false,
                    ..boundary()
                },
                RunEnd::Paused,
            ),
            (
                Boundary {
                    paused: true,
                    ..boundary()
                },
                RunEnd::Paused,
            ),
            (
                Boundary {
                    window_open: false,
                    ..boundary()
                },
                RunEnd::Window,
            ),
        ];
        for (at, end) in cases {
            assert_eq!(Source::Worker.run_end_before_chunk(&none, &at), Some(end));
            assert_eq!(Source::Procedure.run_end_before_chunk(&none, &at), None);
        }
        // A stop outranks everything; disabled outranks the budget (as before a run).
        let all = Boundary {
            stop_requested: true,
            enabled: false,
            paused: true,
            window_open: false,
            ..boundary()
        };
        assert_eq!(
            Source::Worker.run_end_before_chunk(&tight, &all),
            Some(RunEnd::Stopped)
        );
        let off = Boundary {
            enabled: false,
            ..boundary()
        };
        assert_eq!(
            Source::Worker.run_end_before_chunk(&tight, &off),
            Some(RunEnd::Paused)
        );
        assert!(Source::parse("cron").is_err());
    }

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
        assert_eq!(
            ends,
            ["done", "budget", "paused", "stopped", "failed", "window"]
        );
        for bad in ["", "Written", "no work", "running", "crashed", "done "] {
            assert!(Outcome::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "running", "crashed", "no_work", "Done"] {
            assert!(RunEnd::parse(bad).is_err(), "{bad:?}");
        }
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
        // A chunk that ran on past one chunk size and met the room's end.
        assert!(room_done(&ChunkOutcome::Written(report(250)), 100));
        assert!(room_done(
            &ChunkOutcome::NotSaved {
                report: report(705),
                saved: 0
            },
            100
        ));
        assert!(!room_done(&ChunkOutcome::Written(report(300)), 100));
    }

    #[test]
    fn a_batch_goes_on_only_after_a_finished_room_and_within_one_chunk() {
        let b = |rooms, groups| Batch { rooms, groups };
        // A room finished in its one chunk: the rest of the chunk's groups are left.
        assert_eq!(
            next_in_batch(Outcome::Written, true, b(1, 120), 500),
            Some(380)
        );
        assert_eq!(
            next_in_batch(Outcome::NotSaved, true, b(2, 499), 500),
            Some(1)
        );
        assert_eq!(
            next_in_batch(Outcome::RoomDone, false, b(1, 0), 500),
            Some(500)
        );
        // A room with groups left, a failure, no work: the step ends.
        assert_eq!(next_in_batch(Outcome::Written, false, b(1, 500), 500), None);
        assert_eq!(next_in_batch(Outcome::NotSaved, false, b(1, 10), 500), None);
        assert_eq!(next_in_batch(Outcome::Failed, true, b(1, 10), 500), None);
        assert_eq!(next_in_batch(Outcome::NoWork, true, b(0, 0), 500), None);
        // Full: by groups, or by rooms (empty rooms included).
        assert_eq!(next_in_batch(Outcome::Written, true, b(3, 500), 500), None);
        assert_eq!(next_in_batch(Outcome::Written, true, b(3, 900), 500), None);
        assert_eq!(
            next_in_batch(Outcome::RoomDone, true, b(MAX_BATCH_ROOMS, 0), 500),
            None
        );
        assert_eq!(
            next_in_batch(Outcome::RoomDone, true, b(MAX_BATCH_ROOMS - 1, 0), 500),
            Some(500)
        );
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

    fn hm(h: u32, m: u32) -> u32 {
        h * 60 + m
    }

    #[test]
    fn window_contains_its_start_not_its_end() {
        let w = Window::parse("01:00-06:00").unwrap();
        assert!(!w.is_always());
        assert!(!w.contains(hm(0, 59)));
        assert!(w.contains(hm(1, 0)));
        assert!(w.contains(hm(5, 59)));
        assert!(!w.contains(hm(6, 0)));
        assert!(!w.contains(hm(23, 59)));
        assert!(!w.contains(0));
        let n = (0..MINUTES_PER_DAY).filter(|&m| w.contains(m)).count();
        assert_eq!(n, 5 * 60);
    }

    #[test]
    fn minutes_until_open_lands_on_the_first_open_minute() {
        for text in [
            "",
            "01:00-06:00",
            "22:30-02:00",
            "23:59-00:00",
            "00:00-23:59",
            "12:00-12:01",
        ] {
            let w = Window::parse(text).unwrap();
            for m in 0..MINUTES_PER_DAY {
                let wait = w.minutes_until_open(m);
                let at = (m + wait) % MINUTES_PER_DAY;
                assert!(w.contains(at), "{text}: {m} + {wait} is closed");
                // No earlier minute is open.
                assert!(
                    (0..wait).all(|d| !w.contains((m + d) % MINUTES_PER_DAY)),
                    "{text}: {m} waits {wait}, an earlier minute is open"
                );
            }
        }
        let w = Window::parse("01:00-06:00").unwrap();
        assert_eq!(w.minutes_until_open(hm(6, 0)), 19 * 60);
        assert_eq!(w.minutes_until_open(hm(0, 59)), 1);
        assert_eq!(w.minutes_until_open(hm(3, 0)), 0);
    }

    #[test]
    fn window_wraps_midnight() {
        let w = Window::parse(" 22:30 - 02:00 ").unwrap();
        assert!(!w.contains(hm(22, 29)));
        assert!(w.contains(hm(22, 30)));
        assert!(w.contains(hm(23, 59)));
        assert!(w.contains(0));
        assert!(w.contains(hm(1, 59)));
        assert!(!w.contains(hm(2, 0)));
        assert!(!w.contains(hm(12, 0)));
        let n = (0..MINUTES_PER_DAY).filter(|&m| w.contains(m)).count();
        assert_eq!(n, 3 * 60 + 30);
        // Up to midnight, and from midnight.
        let late = Window::parse("23:00-24:00").unwrap();
        assert!(late.contains(hm(23, 59)) && !late.contains(0) && !late.contains(hm(22, 59)));
        let early = Window::parse("0:00-1:30").unwrap();
        assert!(early.contains(0) && early.contains(hm(1, 29)) && !early.contains(hm(1, 30)));
        // One minute wide, across midnight.
        let tiny = Window::parse("23:59-00:00").unwrap();
        assert_eq!(
            (0..MINUTES_PER_DAY).filter(|&m| tiny.contains(m)).count(),
            1
        );
        assert!(tiny.contains(hm(23, 59)));
    }

    #[test]
    fn empty_window_is_always() {
        for text in ["", "  "] {
            let w = Window::parse(text).unwrap();
            assert_eq!(w, Window::ALWAYS);
            assert!(w.is_always());
            assert!((0..MINUTES_PER_DAY).all(|m| w.contains(m)));
        }
    }

    #[test]
    fn malformed_windows_are_refused_with_a_reason() {
        for bad in [
            "01:00",
            "01:00-",
            "-06:00",
            "1-6",
            "01:00-06:00-07:00",
            "01.00-06.00",
            "25:00-06:00",
            "01:60-06:00",
            "24:00-06:00",
            "01:00-24:01",
            "001:00-06:00",
            "01:0-06:00",
            "01:000-06:00",
            "+1:00-06:00",
            "01:00-06:00 x",
            "a:bc-06:00",
            "06:00-06:00",
            "00:00-24:00",
            "٠١:00-06:00",
        ] {
            let e = Window::parse(bad).expect_err(bad);
            let Error::InvalidArgument { name, reason } = e else {
                panic!("{bad:?}: {e:?}");
            };
            assert_eq!(name, "window");
            assert!(!reason.is_empty(), "{bad:?}");
        }
        let e = Window::parse("06:00-06:00").unwrap_err().to_string();
        assert!(e.contains("use '' for always"), "{e}");
        let e = Window::parse("25:00-06:00").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid window: start \"25:00\" is not a time of day (00:00 to 23:59)"
        );
    }
}
