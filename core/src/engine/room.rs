//! `compress_room`: a room (or part of it) in one atomic unit.

use super::{NotWritten, Options, Progress, Run, Summary};
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
    let mut run = Run::start(store, room, opts)?;
    if !dry_run {
        store.begin_atomic()?;
    }
    loop {
        store.check_interrupts();
        match run.step(store) {
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
    summary.elapsed_ms = run.started.elapsed().as_millis() as u64;
    Ok(summary)
}
