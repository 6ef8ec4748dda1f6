//! SQL functions of the `synapse_compress` schema written in Rust: the plumbing of
//! scheduled runs (`begin_run`, `run_step`, `end_run`, used by `CALL
//! compress_database()`), the worker's latch, and what reads or changes Synapse's
//! tables for the views and admins (`room_state_groups`, `room_progress`, `reset_room`),
//! which must run as the tables' owner. The rest (`pause`, `resume`, `run_now`,
//! `set_state_schema`) and the views are in sql/schedule.sql.
//!
//! Every function pins `search_path`: the database's own default is the database
//! owner's to set, and may hold look-alike functions and operators.

use pgrx::prelude::*;

#[pg_schema]
pub mod synapse_compress {
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode;

    use crate::errors::{clean, raise, report, required};
    use crate::schedule::{self, Next, Source};
    use crate::worker;
    use synapse_compress_core::schedule::{Budget, Outcome, RunEnd};

    /// Whether this server registered the background worker (library preloaded and
    /// `synapse_compress.workers` > 0).
    #[pg_extern(stable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn worker_registered() -> bool {
        worker::registered()
    }

    /// Minutes from `minute_of_day` (0..1439) until `synapse_compress.window` is open:
    /// 0 inside it (and when it is empty). `window_start()` and the `status` view's
    /// `next_run` use it, with the worker's own rule (`schedule::Window`).
    #[pg_extern(stable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn window_wait(minute_of_day: Option<i32>) -> Option<i32> {
        let minute = required(minute_of_day, "minute_of_day");
        let Some(minute) = u32::try_from(minute).ok().filter(|m| *m < 24 * 60) else {
            crate::errors::report(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("minute_of_day {minute} is not between 0 and 1439"),
                "Pass minutes since midnight: hours * 60 + minutes.".into(),
            )
        };
        crate::gucs::window().map(|w| w.minutes_until_open(minute) as i32)
    }

    /// Set the latch of every running worker; returns how many were woken.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn wake_workers() -> i32 {
        worker::wake_all()
    }

    /// Start a scheduled run (internal: used by compress_database).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn begin_run(source: Option<&str>) -> i64 {
        let source = Source::parse(required(source, "source")).unwrap_or_else(|e| raise(e));
        clean(|| Spi::connect_mut(|client| schedule::begin_run(client, source)))
            .unwrap_or_else(|e| raise(e))
    }

    /// One step of a run (internal: used by compress_database): the run policy at this
    /// chunk boundary, then the next chunk. `run_end` is how the run ends (NULL: go on,
    /// after `pause_ms`); `outcome` is the chunk's (NULL when none ran).
    #[allow(clippy::type_complexity)]
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn run_step(
        run_id: Option<i64>,
        elapsed: default!(Option<Interval>, "'0'"),
        chunks: default!(Option<i32>, 0),
        time_budget: default!(Option<Interval>, "NULL"),
        max_chunks: default!(Option<i32>, "NULL"),
    ) -> TableIterator<
        'static,
        (
            name!(outcome, Option<String>),
            name!(room_id, Option<String>),
            name!(groups, i64),
            name!(groups_changed, i64),
            name!(rows_before, i64),
            name!(rows_after, i64),
            name!(message, Option<String>),
            name!(run_end, Option<String>),
            name!(pause_ms, i32),
        ),
    > {
        let run = required(run_id, "run_id");
        let elapsed = duration(elapsed, "elapsed").unwrap_or_default();
        let chunks = u64::try_from(required(chunks, "chunks")).unwrap_or_else(|_| {
            report(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "chunks must not be negative".into(),
                "Pass how many chunks the run has done.".into(),
            )
        });
        let budget = Budget {
            time: duration(time_budget, "time_budget"),
            chunks: max_chunks.map(|c| c.max(0) as u64),
        };
        let next = clean(|| {
            Spi::connect_mut(|client| schedule::step(client, run, budget, elapsed, chunks, false))
        })
        .unwrap_or_else(|e| raise(e));
        let pause_ms = crate::gucs::CHUNK_PAUSE.get();
        TableIterator::once(match next {
            Next::Chunk(s) => (
                Some(s.outcome.as_str().to_string()),
                s.room_id,
                s.groups,
                s.groups_changed,
                s.rows_before,
                s.rows_after,
                s.message,
                None,
                pause_ms,
            ),
            Next::End { end, message } => (
                (end == RunEnd::Done).then(|| Outcome::NoWork.as_str().to_string()),
                None,
                0,
                0,
                0,
                0,
                message,
                Some(end.as_str().to_string()),
                pause_ms,
            ),
        })
    }

    /// A non-negative interval as a duration.
    fn duration(value: Option<Interval>, name: &str) -> Option<std::time::Duration> {
        value.map(|v| {
            std::time::Duration::try_from(v).unwrap_or_else(|_| {
                report(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{name} must not be negative"),
                    "Pass a positive interval, or NULL for no limit.".into(),
                )
            })
        })
    }

    /// Finish a run (internal: used by compress_database).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn end_run(run_id: Option<i64>, outcome: Option<&str>, message: Option<&str>) {
        let run = required(run_id, "run_id");
        let outcome = required(outcome, "outcome");
        clean(|| Spi::connect_mut(|client| schedule::end_run(client, run, outcome, message)))
            .unwrap_or_else(|e| raise(e))
    }

    /// Number of state groups of a room (the rooms view's state_groups column).
    #[pg_extern(stable, parallel_restricted)]
    #[search_path(pg_catalog, pg_temp)]
    fn room_state_groups(room_id: Option<&str>) -> Option<i64> {
        let room = room_id?;
        clean(|| Spi::connect(|client| schedule::room_state_groups(client, room)))
            .map(Some)
            .unwrap_or_else(|e| raise(e))
    }

    /// Every room's saved progress in the existing tool's tables (the rooms view).
    #[allow(clippy::type_complexity)]
    #[pg_extern(stable, parallel_restricted)]
    #[search_path(pg_catalog, pg_temp)]
    fn room_progress() -> TableIterator<
        'static,
        (
            name!(room_id, String),
            name!(compressed_up_to, i64),
            name!(levels, Option<String>),
        ),
    > {
        let rows = clean(|| Spi::connect(schedule::room_progress)).unwrap_or_else(|e| raise(e));
        TableIterator::new(rows)
    }

    /// Forget a room's saved levels, progress and errors: the next run starts it over.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn reset_room(room_id: Option<&str>) {
        let room = required(room_id, "room_id");
        clean(|| Spi::connect_mut(|client| schedule::reset_room(client, room)))
            .unwrap_or_else(|e| raise(e))
    }
}
