//! Scheduled compression: one run walks the rooms with the most to gain, one chunk per
//! transaction. The background worker and `CALL compress_database()` both drive it
//! (`begin_run`, then `run_chunk` until it reports no work, then `end_run`), and every
//! chunk goes through the core's one rewrite path (`incremental::compress_chunk`).
//!
//! A chunk's rewrite, the room's saved levels and progress, and the run's counters
//! commit together, so a crash neither loses nor repeats work. A room that fails is
//! recorded with its error and retried later with backoff; other rooms go on.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use pgrx::datum::DatumWithOid;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, FromDatum, IntoDatum};
use synapse_compress_core::engine::MAX_CHUNK_SIZE;
use synapse_compress_core::hash::FxHashSet;
use synapse_compress_core::incremental::{self, ChunkLimits, ChunkOutcome};
use synapse_compress_core::{Error, GroupId, LevelSpec, Result};

use crate::store::{free_result, spi, SpiStore};
use crate::{errors, guard, gucs, progress};

/// Who drives a run (recorded in `synapse_compress.runs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Worker,
    Procedure,
}

impl Source {
    pub fn parse(text: &str) -> Result<Source> {
        match text {
            "worker" => Ok(Source::Worker),
            "procedure" => Ok(Source::Procedure),
            other => Err(Error::InvalidArgument {
                name: "source",
                reason: format!("{other:?} is neither 'worker' nor 'procedure'"),
            }),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Source::Worker => "worker",
            Source::Procedure => "procedure",
        }
    }
}

/// What one call of `run_chunk` did.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// `written`, `not_saved` (undone: it would not have paid off), `room_done`,
    /// `failed` (recorded on the room), or `no_work` (the run is over).
    pub outcome: &'static str,
    pub room_id: Option<String>,
    pub groups: i64,
    pub groups_changed: i64,
    pub rows_before: i64,
    pub rows_after: i64,
    pub message: Option<String>,
}

fn one<T: FromDatum + IntoDatum>(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Option<T>> {
    let table = client.select(sql, None, args).map_err(spi)?;
    let v = if table.is_empty() {
        None
    } else {
        table.first().get_one::<T>().map_err(spi)?
    };
    free_result();
    Ok(v)
}

fn exec(client: &mut SpiClient<'_>, sql: &str, args: &[DatumWithOid]) -> Result<()> {
    client.update(sql, None, args).map_err(spi)?;
    free_result();
    Ok(())
}

/// The levels new rooms get.
fn default_levels() -> Result<LevelSpec> {
    LevelSpec::parse(&gucs::text(&gucs::LEVELS))
}

/// Start a run: close runs whose backend is gone, prune history, bring the room queue
/// up to date with the groups created since the last run, and record the run. Groups
/// created after this point are left to the next run.
pub fn begin_run(client: &mut SpiClient<'_>, source: Source) -> Result<i64> {
    default_levels()?;
    exec(
        client,
        "UPDATE synapse_compress.runs r SET outcome = 'crashed', finished_at = clock_timestamp() \
         WHERE r.outcome = 'running' AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
             WHERE a.pid = r.pid AND a.backend_start IS NOT DISTINCT FROM r.backend_start)",
        &[],
    )?;
    exec(
        client,
        "DELETE FROM synapse_compress.runs WHERE finished_at < now() - make_interval(days => $1)",
        &[gucs::HISTORY_DAYS.get().into()],
    )?;
    // The row lock serialises concurrent starts (several workers, a procedure).
    let scanned: i64 = one(
        client,
        "SELECT scanned_upto FROM synapse_compress.control FOR UPDATE",
        &[],
    )?
    .ok_or_else(|| Error::Store("synapse_compress.control has no row".into()))?;
    let upto: i64 = one(client, "SELECT coalesce(max(id), 0) FROM state_groups", &[])?.unwrap_or(0);
    if upto > scanned {
        // Only the new groups are counted (an index range scan), never the whole table
        // again; groups an adopted room had already compressed are not counted.
        exec(
            client,
            "INSERT INTO synapse_compress.room_queue AS q (room_id, pending_groups, pending_rows) \
             SELECT g.room_id, count(*), coalesce(sum(r.n), 0) \
             FROM state_groups g \
             LEFT JOIN state_compressor_progress p ON p.room_id = g.room_id \
             LEFT JOIN (SELECT state_group, count(*) AS n FROM state_groups_state \
                        WHERE state_group > $1 AND state_group <= $2 GROUP BY state_group) r \
                    ON r.state_group = g.id \
             WHERE g.id > $1 AND g.id <= $2 AND g.id > coalesce(p.last_compressed, 0) \
             GROUP BY g.room_id \
             ON CONFLICT (room_id) DO UPDATE \
                SET pending_groups = q.pending_groups + excluded.pending_groups, \
                    pending_rows = q.pending_rows + excluded.pending_rows",
            &[scanned.into(), upto.into()],
        )?;
        exec(
            client,
            "UPDATE synapse_compress.control SET scanned_upto = $1",
            &[upto.into()],
        )?;
    }
    let run: i64 = one(
        client,
        "INSERT INTO synapse_compress.runs (source, backend_start, upto, chunk_size) \
         SELECT $1, (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()), $2, $3 \
         RETURNING run_id",
        &[source.as_str().into(), upto.into(), gucs::CHUNK_SIZE.get().into()],
    )?
    .ok_or_else(|| Error::Store("no run id".into()))?;
    Ok(run)
}

pub fn end_run(
    client: &mut SpiClient<'_>,
    run: i64,
    outcome: &str,
    message: Option<&str>,
) -> Result<()> {
    if !matches!(outcome, "done" | "budget" | "paused" | "stopped" | "failed") {
        return Err(Error::InvalidArgument {
            name: "outcome",
            reason: format!("{outcome:?} is not one of done, budget, paused, stopped, failed"),
        });
    }
    exec(
        client,
        "UPDATE synapse_compress.runs SET outcome = $2, finished_at = clock_timestamp(), message = $3, \
             current_room = NULL, current_group = NULL \
         WHERE run_id = $1 AND outcome = 'running'",
        &[run.into(), outcome.into(), message.into()],
    )
}

struct RunRow {
    upto: i64,
    chunk_size: i32,
    current_room: Option<String>,
    source: Source,
}

fn load_run(client: &SpiClient<'_>, run: i64) -> Result<RunRow> {
    let table = client
        .select(
            "SELECT upto, chunk_size, current_room, source FROM synapse_compress.runs \
             WHERE run_id = $1 AND outcome = 'running'",
            None,
            &[run.into()],
        )
        .map_err(spi)?;
    if table.is_empty() {
        free_result();
        return Err(Error::InvalidArgument {
            name: "run_id",
            reason: format!("run {run} is not running"),
        });
    }
    let row = table.first();
    let (upto, chunk_size, current_room) = row.get_three::<i64, i32, String>().map_err(spi)?;
    let source: Option<String> = row.get(4).map_err(spi)?;
    free_result();
    Ok(RunRow {
        upto: upto.unwrap_or(0),
        chunk_size: chunk_size.unwrap_or(500),
        current_room,
        source: Source::parse(source.as_deref().unwrap_or(""))?,
    })
}

/// The room to work on: the run's current room while it has work, else the one with
/// the most uncompressed rows; never one another session or worker is compressing.
fn pick_room(client: &mut SpiClient<'_>, current: Option<&str>) -> Result<Option<String>> {
    let table = client
        .update(
            "SELECT room_id FROM synapse_compress.room_queue \
             WHERE pending_groups > 0 AND (next_retry IS NULL OR next_retry <= now()) \
             ORDER BY (room_id = $1) IS TRUE DESC, pending_rows DESC, room_id \
             LIMIT 8 FOR UPDATE SKIP LOCKED",
            None,
            &[current.into()],
        )
        .map_err(spi)?;
    let mut candidates = Vec::new();
    for row in table {
        if let Some(room) = row.get::<String>(1).map_err(spi)? {
            candidates.push(room);
        }
    }
    free_result();
    for room in candidates {
        let locked: Option<bool> = one(
            client,
            "SELECT pg_try_advisory_xact_lock(hashtext('synapse_compress'), hashtext($1))",
            &[room.as_str().into()],
        )?;
        if locked == Some(true) {
            return Ok(Some(room));
        }
    }
    Ok(None)
}

fn report_activity(text: &str) {
    if let Ok(c) = std::ffi::CString::new(text) {
        // SAFETY: backend thread; PostgreSQL copies the string.
        unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
    }
}

/// A room's `Store::tangled` groups as the run's first chunk of it found them: reading
/// them scans the room, too slow for every chunk of a large one. They only change if
/// corruption appears mid-run.
struct Tangled {
    run: i64,
    room: String,
    groups: Rc<FxHashSet<GroupId>>,
}

thread_local! {
    static TANGLED: RefCell<Option<Tangled>> = const { RefCell::new(None) };
}

/// Compress the next chunk of the run; `outcome == "no_work"` ends the run.
pub fn run_chunk(client: &mut SpiClient<'_>, run: i64) -> Result<Step> {
    let row = load_run(client, run)?;
    let levels = default_levels()?;
    let Some(room) = pick_room(client, row.current_room.as_deref())? else {
        return Ok(Step {
            outcome: "no_work",
            ..Step::default()
        });
    };
    let (progress, corrected) = progress::load(client, &room, &levels)?;
    if row.source == Source::Worker {
        report_activity(&format!(
            "synapse_compress run {run}: room {room}, chunk after state group {}",
            progress.last_compressed
        ));
    }
    let limits = ChunkLimits {
        chunk_size: row.chunk_size.clamp(1, MAX_CHUNK_SIZE as i32) as usize,
        upto: row.upto,
        min_saved_rows: gucs::MIN_SAVED_ROWS.get() as i64,
        memory_limit: gucs::memory_limit(),
    };
    let started = Instant::now();
    let tangled = TANGLED.with(|t| match &*t.borrow() {
        Some(t) if t.run == run && t.room == room => Some(t.groups.clone()),
        _ => None,
    });
    let result = guard::contained(|| {
        let mut store = SpiStore::new(client, true).map_err(spi)?;
        let r = incremental::compress_chunk(&mut store, &room, &progress, limits, tangled.clone())?;
        if let Some(set) = &r.tangled {
            let found = Tangled {
                run,
                room: room.clone(),
                groups: set.clone(),
            };
            TANGLED.with(|t| *t.borrow_mut() = Some(found));
        }
        drop(store);
        progress::save(client, &room, &r.progress)?;
        Ok(r)
    });
    let elapsed_ms = started.elapsed().as_millis() as i64;
    let mut step = Step {
        room_id: Some(room.clone()),
        ..Step::default()
    };
    let (mut saved, mut not_saved, mut errors, mut skipped, mut position) =
        (0, 0, 0, 0, progress.last_compressed);
    match result {
        Ok(r) => {
            position = r.progress.last_compressed;
            let mut notes = Vec::new();
            if corrected {
                notes.push("saved levels were invalid and were restarted".to_string());
            }
            if r.levels_reset {
                notes.push(
                    "saved levels did not match the stored tree and were restarted".to_string(),
                );
            }
            let (report, written) = match &r.outcome {
                ChunkOutcome::Done => (None, false),
                ChunkOutcome::Written(rep) => (Some(rep), true),
                ChunkOutcome::NotSaved { report, saved } => {
                    notes.push(format!("chunk undone: it would have saved {saved} rows"));
                    (Some(report), false)
                }
            };
            let room_done = report.is_none_or(|rep| (rep.groups as usize) < limits.chunk_size);
            if let Some(rep) = report {
                step.groups = rep.groups as i64;
                step.rows_before = rep.rows_before as i64;
                skipped = rep.skipped.len() as i64;
                if written {
                    step.outcome = "written";
                    step.groups_changed = rep.changed as i64;
                    step.rows_after = rep.rows_after as i64;
                    saved = step.rows_before - step.rows_after;
                } else {
                    step.outcome = "not_saved";
                    step.rows_after = step.rows_before;
                    not_saved = 1;
                }
            } else {
                step.outcome = "room_done";
            }
            step.message = (!notes.is_empty()).then(|| notes.join("; "));
            exec(
                client,
                "UPDATE synapse_compress.room_queue SET \
                    pending_groups = CASE WHEN $2 THEN 0 ELSE greatest(pending_groups - $3, 1) END, \
                    pending_rows = CASE WHEN $2 THEN 0 ELSE greatest(pending_rows - $4, 0) END, \
                    rows_saved = rows_saved + $5, \
                    chunks_written = chunks_written + $6, \
                    chunks_not_saved = chunks_not_saved + $7, \
                    groups_skipped = groups_skipped + $8, \
                    last_chunk_at = now(), error_count = 0, next_retry = NULL \
                 WHERE room_id = $1",
                &[
                    room.as_str().into(),
                    room_done.into(),
                    step.groups.into(),
                    step.rows_before.into(),
                    saved.into(),
                    i64::from(written).into(),
                    not_saved.into(),
                    skipped.into(),
                ],
            )?;
        }
        Err(failure) => {
            errors = 1;
            step.outcome = "failed";
            let message = format!(
                "{} (SQLSTATE {}, {} attempt{})",
                failure.message,
                failure.sqlstate,
                failure.attempts,
                if failure.attempts == 1 { "" } else { "s" }
            );
            // Backoff: 1, 2, 4, ... minutes, at most a day.
            exec(
                client,
                "UPDATE synapse_compress.room_queue SET last_error = $2, last_error_at = now(), \
                    error_count = error_count + 1, \
                    next_retry = now() + least(interval '1 minute' * power(2, least(error_count, 20)), interval '1 day') \
                 WHERE room_id = $1",
                &[room.as_str().into(), message.as_str().into()],
            )?;
            pgrx::warning!("synapse_compress: room {room} skipped: {message}");
            step.message = Some(message);
        }
    }
    let next_size = adapt_chunk_size(row.chunk_size, elapsed_ms);
    exec(
        client,
        "UPDATE synapse_compress.runs SET \
            rooms = rooms + (current_room IS DISTINCT FROM $2)::int, \
            current_room = $2, current_group = $3, \
            chunks = chunks + 1, chunks_not_saved = chunks_not_saved + $4, \
            groups = groups + $5, groups_changed = groups_changed + $6, \
            rows_before = rows_before + $7, rows_after = rows_after + $8, \
            errors = errors + $9, chunk_size = $10 \
         WHERE run_id = $1",
        &[
            run.into(),
            room.as_str().into(),
            position.into(),
            not_saved.into(),
            step.groups.into(),
            step.groups_changed.into(),
            step.rows_before.into(),
            step.rows_after.into(),
            errors.into(),
            next_size.into(),
        ],
    )?;
    if saved != 0 {
        exec(
            client,
            "UPDATE synapse_compress.control SET rows_saved = rows_saved + $1",
            &[saved.into()],
        )?;
    }
    Ok(step)
}

/// With `synapse_compress.target_chunk_time` set, move the chunk size halfway towards
/// the size that would take that long (halfway: one slow chunk must not swing it).
fn adapt_chunk_size(size: i32, elapsed_ms: i64) -> i32 {
    let target = gucs::TARGET_CHUNK_TIME.get();
    if target == 0 || elapsed_ms == 0 {
        return size;
    }
    let ideal = size as f64 * target as f64 / elapsed_ms as f64;
    (((size as f64 + ideal) / 2.0).round() as i64).clamp(10, MAX_CHUNK_SIZE as i64) as i32
}

/// `errors::raise` for a scheduled-run error at the SQL boundary.
pub fn raise(e: Error) -> ! {
    errors::raise(e)
}
