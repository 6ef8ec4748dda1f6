//! synapse_compress: compress Synapse's state tables inside PostgreSQL.
//!
//! The algorithm lives in the `synapse_compress_core` crate (no PostgreSQL in it).
//! This crate is the thin layer around it:
//! - `api`: `compress_room`, the one-room SQL function;
//! - `schedule`: scheduled runs over the whole database, one chunk per transaction;
//! - `worker`: the background worker that drives `schedule` on a timer;
//! - `plan`: `plan_room` and `plan_room_json`, what `compress_room` would do, group
//!   by group;
//! - `admin`: the `synapse_compress.*` SQL functions behind `CALL compress_database()`;
//! - `rooms`: per-room control (`exclude_room`, `set_room_priority`, ...);
//! - `progress`: a room's saved levels (the existing tool's tables);
//! - `owner`: where Synapse's tables are, and running every access to them as their
//!   owner, security-restricted (least privilege);
//! - `spi`: the core's `Store` over SPI, subtransactions, and containing one chunk's
//!   failure (`spi::store`, `spi::subxact`, `spi::guard`);
//! - `errors`: core errors → PostgreSQL errors with SQLSTATE and hint;
//! - `gucs`: settings.

use pgrx::prelude::*;

mod admin;
mod api;
mod errors;
mod gucs;
mod owner;
mod plan;
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
        admin::synapse_compress::worker_registered,
        admin::synapse_compress::wake_workers,
        admin::synapse_compress::room_state_groups,
        admin::synapse_compress::room_progress,
        admin::synapse_compress::window_wait
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
