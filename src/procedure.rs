//! The SQL functions `CALL compress_database()` is made of: `begin_run`, then
//! `run_step` until it says how the run ends, then `end_run` (internal, not PUBLIC's).
//! `run_step` is `schedule::step`, the same step the background worker takes, so both
//! drivers follow one run policy. The procedure itself is in sql/schedule.sql.
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
    use synapse_compress_core::schedule::{Budget, Outcome, RunEnd};

    /// Start a scheduled run (internal: used by compress_database).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn begin_run(source: Option<&str>) -> i64 {
        let source = Source::parse(required(source, "source")).unwrap_or_else(|e| raise(e));
        clean(|| Spi::connect_mut(|client| schedule::begin_run(client, source)))
            .unwrap_or_else(|e| raise(e))
    }

    /// One step of a run (internal: used by compress_database): the run policy at this
    /// chunk boundary, then the next chunk, or several small rooms' (`chunks_done`).
    /// `run_end` is how the run ends (NULL: go on, after `pause_ms`); `outcome`,
    /// `room_id` and `message` are the last chunk's (NULL when none ran), the counts
    /// the step's.
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
            name!(chunks_done, i32),
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
                s.chunks.min(i32::MAX as u64) as i32,
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
                0,
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
}
