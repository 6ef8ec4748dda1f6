//! SQL functions of the `synapse_compress` schema written in Rust: the plumbing of
//! scheduled runs (`begin_run`, `run_chunk`, `end_run`, used by `CALL
//! compress_database()`) and the worker's latch. The admin-facing functions around them
//! (`pause`, `resume`, `run_now`, `reset_room`) and the views are in sql/schedule.sql.

use pgrx::prelude::*;

#[pg_schema]
pub mod synapse_compress {
    use pgrx::prelude::*;

    use crate::errors::{raise, required};
    use crate::schedule::{self, Source};
    use crate::worker;

    /// Whether this server registered the background worker (library preloaded and
    /// `synapse_compress.workers` > 0).
    #[pg_extern(stable, parallel_safe)]
    fn worker_registered() -> bool {
        worker::registered()
    }

    /// Set the latch of every running worker; returns how many were woken.
    #[pg_extern(volatile, parallel_unsafe)]
    fn wake_workers() -> i32 {
        worker::wake_all()
    }

    /// Start a scheduled run (internal: used by compress_database).
    #[pg_extern(volatile, parallel_unsafe)]
    fn begin_run(source: Option<&str>) -> i64 {
        let source = Source::parse(required(source, "source")).unwrap_or_else(|e| raise(e));
        Spi::connect_mut(|client| schedule::begin_run(client, source)).unwrap_or_else(|e| raise(e))
    }

    /// Compress the next chunk of a run (internal: used by compress_database).
    #[allow(clippy::type_complexity)]
    #[pg_extern(volatile, parallel_unsafe)]
    fn run_chunk(
        run_id: Option<i64>,
    ) -> TableIterator<
        'static,
        (
            name!(outcome, String),
            name!(room_id, Option<String>),
            name!(groups, i64),
            name!(groups_changed, i64),
            name!(rows_before, i64),
            name!(rows_after, i64),
            name!(message, Option<String>),
        ),
    > {
        let run = required(run_id, "run_id");
        let s = Spi::connect_mut(|client| schedule::run_chunk(client, run))
            .unwrap_or_else(|e| raise(e));
        TableIterator::once((
            s.outcome.to_string(),
            s.room_id,
            s.groups,
            s.groups_changed,
            s.rows_before,
            s.rows_after,
            s.message,
        ))
    }

    /// Finish a run (internal: used by compress_database).
    #[pg_extern(volatile, parallel_unsafe)]
    fn end_run(run_id: Option<i64>, outcome: Option<&str>, message: Option<&str>) {
        let run = required(run_id, "run_id");
        let outcome = required(outcome, "outcome");
        Spi::connect_mut(|client| schedule::end_run(client, run, outcome, message))
            .unwrap_or_else(|e| raise(e))
    }
}
