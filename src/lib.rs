//! synapse_compress: compress Synapse's state tables inside PostgreSQL.
//!
//! The algorithm and the run policy live in the `synapse_compress_core` crate (no
//! PostgreSQL in it). This crate holds what must touch PostgreSQL: the SQL functions,
//! the worker, the locking protocol over SPI and running every access to Synapse's
//! tables as their owner:
//! - `api`: `compress_room`, the one-room SQL function;
//! - `schedule`: scheduled runs over the whole database, one chunk per transaction
//!   (`step`: the run policy, then a chunk; both drivers call it);
//! - `worker`: the background worker that drives `schedule` on a timer, and its SQL
//!   functions (`worker_registered`, `wake_workers`, `window_wait`);
//! - `plan`: `plan_room` and `plan_room_json`, what `compress_room` would do, group
//!   by group;
//! - `procedure`: the SQL functions `CALL compress_database()` is made of (`begin_run`,
//!   `run_step`, `end_run`);
//! - `rooms`: per-room control (`exclude_room`, `set_room_priority`, ...), the `rooms`
//!   view's readers and `reset_room`;
//! - `progress`: a room's saved levels (the existing tool's tables);
//! - `owner`: where Synapse's tables are, and running every access to them as their
//!   owner, security-restricted (least privilege);
//! - `spi`: the core's `Store` over SPI, subtransactions, and containing one chunk's
//!   failure (`spi::store`, `spi::subxact`, `spi::guard`);
//! - `errors`: core errors → PostgreSQL errors with SQLSTATE and hint;
//! - `gucs`: settings.

use pgrx::prelude::*;

mod api;
mod errors;
mod gucs;
mod owner;
mod plan;
mod procedure;
mod progress;
mod revisit;
mod rooms;
mod schedule;
mod spi;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!(
    "../sql/schedule.sql",
    name = "schedule",
    requires = [
        worker::synapse_compress::worker_registered,
        worker::synapse_compress::wake_workers,
        rooms::synapse_compress::room_state_groups,
        rooms::synapse_compress::room_progress,
        worker::synapse_compress::window_wait
    ]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a backend global.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::init(preloading);
    if preloading {
        worker::register();
    }
}
