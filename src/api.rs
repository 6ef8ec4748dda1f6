//! SQL-callable functions. Each one checks its input, then hands the work to the
//! core engine with an SPI store; see `sql/finalize.sql` for grants and comments.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use synapse_compress_core::engine::{self, NotWritten, Options, Summary};
use synapse_compress_core::{Error, LevelSpec};

use crate::errors::{self, or_default, raise, report, required};
use crate::owner::{Access, StateTables};
use crate::spi::guard;
use crate::spi::locks::{self, Mode};
use crate::spi::store::SpiStore;
use crate::spi::subxact::{self, SubTransaction};
use crate::{gucs, progress};

/// Compress one room's state groups in the caller's transaction; see the COMMENT.
// pgrx needs the row type spelled out in place (no alias), hence the allow.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn compress_room(
    room_id: Option<&str>,
    levels: default!(Option<&str>, "'100,50,25'"),
    dry_run: default!(Option<bool>, false),
    min_saved_rows: default!(Option<i64>, 0),
    after_group: default!(Option<i64>, "NULL"),
    max_groups: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(room_id, String),
        name!(state_groups, i64),
        name!(groups_changed, i64),
        name!(groups_skipped, i64),
        name!(rows_before, i64),
        name!(rows_after, i64),
        name!(forced_snapshots, i64),
        name!(max_chain_after, i32),
        name!(dry_run, bool),
        name!(written, bool),
        name!(elapsed_ms, i64),
    ),
> {
    let started = Instant::now();
    let room = required(room_id, "room_id");
    let levels = LevelSpec::parse(or_default(levels, "levels")).unwrap_or_else(|e| raise(e));
    let dry_run = or_default(dry_run, "dry_run");
    let min_saved_rows = or_default(min_saved_rows, "min_saved_rows");
    let opts = room_options(room, levels, dry_run, after_group, max_groups);
    if min_saved_rows < 0 {
        raise(Error::InvalidArgument {
            name: "min_saved_rows",
            reason: format!("{min_saved_rows} is negative"),
        });
    }

    let level = subxact::Level::here();
    let summary = errors::boundary(
        || level.unwind(),
        || run_without_deadlock(room, opts, dry_run, min_saved_rows),
    )
    .unwrap_or_else(|e| raise(e));
    debug1!(
        "synapse_compress: compress_room {room}: time by phase: {}",
        summary.phases.with_other(started.elapsed())
    );
    // What the engine's accounting (synapse_compress.memory_limit) saw at its peak: set
    // beside the backend's private memory, it shows what the accounting does not see.
    debug1!(
        "synapse_compress: compress_room {room}: memory accounted at peak: {} kB; in SPI's procedure context at the end: {}",
        summary.memory_peak / 1024,
        SPI_PROC_BYTES
            .take()
            .map_or("unknown".to_string(), |b| format!("{} kB", b / 1024))
    );

    match &summary.not_written {
        None | Some(NotWritten::DryRun) => {}
        Some(NotWritten::NothingToChange) => {
            notice!("compress_room {room}: already compressed, nothing written")
        }
        Some(NotWritten::WouldNotSave { saved }) => {
            notice!("compress_room {room}: nothing written, the rewrite would save {saved} rows")
        }
        Some(NotWritten::BelowMinimum { saved, minimum }) => {
            notice!("compress_room {room}: nothing written, {saved} rows saved is below min_saved_rows {minimum}")
        }
        Some(NotWritten::LockRefused) => warning!(
            "compress_room {room}: nothing written: Synapse is deleting some of the room's state groups, \
             and this transaction holds the locks of an earlier compress_room; waiting for Synapse could \
             deadlock with it. The transaction's earlier work is kept: commit, then call compress_room again."
        ),
    }
    // SAFETY: reading transaction state on the backend's thread.
    if summary.written && unsafe { pg_sys::IsTransactionBlock() } {
        notice!(
            "compress_room {room}: its {} state groups read stay locked until this transaction ends; \
             commit soon: Synapse's deletion of them waits until then",
            summary.state_groups
        );
    }
    let s = summary;
    TableIterator::once((
        s.room_id,
        s.state_groups as i64,
        s.groups_changed as i64,
        s.groups_skipped as i64,
        s.rows_before as i64,
        s.rows_after as i64,
        s.forced_snapshots as i64,
        s.max_chain_after as i32,
        s.dry_run,
        s.written,
        s.elapsed_ms as i64,
    ))
}

/// A run's options from a SQL call's arguments and the settings, checked (the room id
/// too): raises 22023 on a bad one.
pub fn room_options(
    room: &str,
    levels: LevelSpec,
    dry_run: bool,
    after_group: Option<i64>,
    max_groups: Option<i64>,
) -> Options {
    if room.is_empty() {
        raise(Error::InvalidArgument {
            name: "room_id",
            reason: "it is empty".into(),
        });
    }
    let opts = Options {
        levels,
        chunk_size: gucs::CHUNK_SIZE.get() as usize,
        dry_run,
        after_group,
        max_groups,
        memory_limit: gucs::memory_limit(),
        recent_choice: true,
    };
    opts.validate().unwrap_or_else(|e| raise(e));
    opts
}

/// `run`, never waiting for a lock while holding others (`spi::locks`), and retried
/// when Synapse changed the room under it. Each attempt is a subtransaction:
/// - A refused lock rolls the attempt back, releasing its locks, and it is retried
///   holding none (its first lock may then wait). If the caller's transaction held
///   locks before this call, retrying cannot help: the run gives up without raising,
///   so that transaction's work is kept.
/// - A row waited for past `synapse_compress.lock_timeout` while holding none (the
///   wait of `spi::locks`; Synapse's deletion of the room's groups holds them for its
///   transaction): rolled back and retried at READ COMMITTED, as a scheduled chunk is
///   (at REPEATABLE READ the row, once free, would be one Synapse changed: 40001).
/// - A write refused because Synapse deleted or marked a chosen predecessor since it
///   was read (`Error::Concurrent`, nothing written) is retried at READ COMMITTED,
///   whose next statements see the deletion or mark, as the scheduled path's chunks
///   are (`guard::contained`); at REPEATABLE READ the retry would read the same
///   snapshot, so it is raised at once.
fn run_without_deadlock(
    room: &str,
    opts: Options,
    dry_run: bool,
    min_saved_rows: i64,
) -> Result<Summary, Error> {
    /// How one attempt ended (one value at a time: its size does not matter).
    #[allow(clippy::large_enum_variant)]
    enum Attempt {
        Ran(Result<Summary, Error>),
        /// A lock refused while holding others (`Mode::NoWait`).
        Refused,
        /// A row waited for past lock_timeout while holding none (`Mode::Wait`).
        TimedOut,
        /// One of those at the last attempt: its message.
        GaveUp(String),
    }
    let held_before = locks::held();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= guard::MAX_ATTEMPTS;
        locks::caught(); // what an earlier error left
        let sub = SubTransaction::begin();
        let opts = opts.clone();
        let out = PgTryBuilder::new(AssertUnwindSafe(|| {
            Attempt::Ran(run(room, opts, dry_run, min_saved_rows))
        }))
        .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |caught| match (
            locks::caught(),
            &caught,
        ) {
            (Some(Mode::NoWait), _) if held_before || !last => Attempt::Refused,
            (Some(Mode::Wait), _) if !last && !guard::snapshot_per_transaction() => {
                Attempt::TimedOut
            }
            (
                Some(Mode::NoWait | Mode::Wait),
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r),
            ) => Attempt::GaveUp(r.message().to_string()),
            _ => caught.rethrow(),
        })
        .execute();
        match out {
            Attempt::Ran(Err(e @ Error::Concurrent { .. }))
                if !last && !guard::snapshot_per_transaction() =>
            {
                sub.end(false);
                notice!("compress_room {room}: attempt {attempt} undone and retried: {e}");
            }
            Attempt::Ran(result) => {
                sub.end(result.is_ok());
                return result;
            }
            Attempt::Refused => {
                sub.end(false);
                if held_before {
                    return Ok(Summary {
                        room_id: room.to_string(),
                        not_written: Some(NotWritten::LockRefused),
                        ..Summary::default()
                    });
                }
            }
            Attempt::TimedOut => {
                // Holding nothing, a row stayed held (Synapse deleting the room's
                // groups): undone, the next attempt waits again.
                sub.end(false);
                notice!(
                    "compress_room {room}: attempt {attempt} undone and retried: a state group \
                     stayed locked by another transaction past synapse_compress.lock_timeout"
                );
            }
            Attempt::GaveUp(message) => {
                sub.end(false);
                let code = PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE;
                report(
                    code,
                    format!(
                        "{message} ({attempt} attempt{})",
                        if attempt == 1 { "" } else { "s" }
                    ),
                    errors::retry_hint(code).unwrap_or_default().into(),
                );
            }
        }
    }
}

/// The compression itself, in one SPI connection, as the state tables' owner.
fn run(room: &str, opts: Options, dry_run: bool, min_saved_rows: i64) -> Result<Summary, Error> {
    // Nothing of a scheduled run cancelled in this session stays beside this budget.
    crate::schedule::forget_run_caches();
    Spi::connect_mut(|client| {
        let access = if dry_run { Access::Read } else { Access::Write };
        let mut tables = StateTables::resolve(client, access)?;
        if !dry_run {
            // Before any lock: creating them may wait for another creator.
            tables.owner().run(|| tables.ensure_tool_tables(client))?;
            lock_room(client, room);
        }
        let summary = tables
            .owner()
            .run(|| compress_as_owner(client, &mut tables, room, opts, min_saved_rows))?;
        // Scheduled runs must not take the snapshots this left for de-deltas.
        if let (false, Some(end)) = (dry_run, &summary.end) {
            crate::revisit::record_room(client, &tables, room, end.last_compressed)?;
        }
        SPI_PROC_BYTES.set(spi_proc_bytes());
        Ok(summary)
    })
}

thread_local! {
    /// What the last `run` left in SPI's procedure context (`spi_proc_bytes`).
    static SPI_PROC_BYTES: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The memory held by SPI's procedure context and its children (result tables left
/// unfreed), which live as long as the connection (the whole call): what was allocated
/// there piles up with the room's size, unseen by `memory_limit`. SPI makes it current
/// after each of its calls, so it is measured only when it is current (`None`
/// otherwise).
fn spi_proc_bytes() -> Option<u64> {
    // SAFETY: backend thread; reading the current context's name and size.
    unsafe {
        let cx = pg_sys::CurrentMemoryContext;
        let name = std::ffi::CStr::from_ptr((*cx).name);
        (name == c"SPI Proc").then(|| pg_sys::MemoryContextMemAllocated(cx, true) as u64)
    }
}

fn compress_as_owner(
    client: &mut pgrx::spi::SpiClient<'_>,
    tables: &mut StateTables,
    room: &str,
    opts: Options,
    min_saved_rows: i64,
) -> Result<Summary, Error> {
    let dry_run = opts.dry_run;
    let mut store = SpiStore::new(client, tables, !dry_run)
        .unwrap_or_else(|e| raise(Error::Store(e.to_string())));
    let interval = Duration::from_secs(gucs::PROGRESS_INTERVAL.get() as u64);
    let mut last_notice = Instant::now();
    let mut on_chunk = |run: &engine::Run, chunk: &engine::ChunkReport| {
        for (group, reason) in chunk.skipped.iter().take(3) {
            notice!("compress_room {room}: state group {group} left unchanged: {reason}");
        }
        if chunk.skipped.len() > 3 {
            notice!(
                "compress_room {room}: {} more groups left unchanged in this chunk",
                chunk.skipped.len() - 3
            );
        }
        if last_notice.elapsed() >= interval {
            last_notice = Instant::now();
            let s = run.summary();
            notice!(
                "compress_room {room}: {}/{} groups, {} changed, rows {} -> {}",
                s.state_groups,
                run.total(),
                s.groups_changed,
                s.rows_before,
                s.rows_after
            );
        }
    };
    let summary = engine::compress_room(&mut store, room, opts, min_saved_rows, &mut on_chunk)?;
    drop(store);
    // Scheduled runs continue from where this one left the room.
    if let Some(end) = &summary.end {
        progress::save(client, tables, room, end)?;
    }
    Ok(summary)
}

/// One rewrite of a room at a time (sessions and the worker): a transaction-level
/// advisory lock, taken without waiting so a second caller learns at once.
fn lock_room(client: &mut pgrx::spi::SpiClient<'_>, room: &str) {
    let got = client
        .update(
            "SELECT pg_try_advisory_xact_lock(hashtext('synapse_compress'), hashtext($1))",
            None,
            &[room.into()],
        )
        .and_then(|t| t.first().get_one::<bool>())
        .unwrap_or_else(|e| raise(Error::Store(e.to_string())));
    if got != Some(true) {
        report(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("room {room:?} is being compressed by another session"),
            "Wait for the other compress_room (or the background worker) to commit, then retry."
                .into(),
        );
    }
}
