//! `compress_room`: a room (or part of it) in one atomic unit.

use super::phases::Timed;
use super::{GroupPlan, NotWritten, Options, Progress, Run, Summary};
use crate::error::{Error, Result};
use crate::store::Store;

/// Compress a room (or part of it) in one atomic unit: every chunk is planned,
/// verified and written; at the end the writes are kept only if they remove rows
/// (at least `min_saved_rows`), else undone. `on_chunk` sees each chunk (progress).
pub fn compress_room(
    store: &mut dyn Store,
    room: &str,
    opts: Options,
    min_saved_rows: i64,
    on_chunk: &mut dyn FnMut(&Run, &super::ChunkReport),
) -> Result<Summary> {
    if min_saved_rows < 0 {
        return Err(Error::InvalidArgument {
            name: "min_saved_rows",
            reason: format!("{min_saved_rows} is negative"),
        });
    }
    let dry_run = opts.dry_run;
    let mut store = Timed::new(store);
    let mut run = Run::start(&mut store, room, opts)?;
    if !dry_run {
        store.begin_atomic()?;
    }
    loop {
        store.check_interrupts();
        match run.step(store.inner()) {
            Ok(Some(report)) => on_chunk(&run, &report),
            Ok(None) => break,
            Err(e) => {
                if !dry_run {
                    let _ = store.end_atomic(false);
                }
                return Err(e);
            }
        }
    }
    let mut summary = run.summary.clone();
    let saved = summary.rows_saved();
    summary.not_written = if dry_run {
        Some(NotWritten::DryRun)
    } else if summary.groups_changed == 0 {
        Some(NotWritten::NothingToChange)
    } else if saved <= 0 {
        Some(NotWritten::WouldNotSave { saved })
    } else if saved < min_saved_rows {
        Some(NotWritten::BelowMinimum {
            saved,
            minimum: min_saved_rows,
        })
    } else {
        None
    };
    summary.written = summary.not_written.is_none();
    if summary.written {
        summary.end = Some(Progress {
            last_compressed: run.position(),
            levels: run.levels().clone(),
        });
    }
    if !dry_run {
        store.end_atomic(summary.written)?;
    }
    summary.phases.merge(&store.phases);
    summary.elapsed_ms = run.started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// What `compress_room` would do to a room, group by group, writing nothing: a dry
/// run of the same `Run` (same load path, same planner) that records each group's
/// plan. The sum of the plans' `rows_after` is the dry run's `rows_after`. The plans
/// are held in memory beside the run's budget: bound them with `opts.max_groups`.
pub fn plan_room(
    store: &mut dyn Store,
    room: &str,
    mut opts: Options,
) -> Result<(Summary, Vec<GroupPlan>)> {
    opts.dry_run = true;
    let mut run = Run::start(store, room, opts)?;
    run.record_plan();
    let mut plans = Vec::new();
    loop {
        store.check_interrupts();
        match run.step(store)? {
            Some(report) => plans.extend(report.plan),
            None => break,
        }
    }
    let mut summary = run.summary.clone();
    summary.not_written = Some(NotWritten::DryRun);
    summary.elapsed_ms = run.started.elapsed().as_millis() as u64;
    Ok((summary, plans))
}
