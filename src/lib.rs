//! synapse_compress: compress Synapse's state tables inside PostgreSQL.
//!
//! The algorithm lives in the `synapse_compress_core` crate (no PostgreSQL in it).
//! This crate is the thin layer around it:
//! - `api`: `compress_room`, the one-room SQL function;
//! - `schedule`: scheduled runs over the whole database, one chunk per transaction;
//! - `worker`: the background worker that drives `schedule` on a timer;
//! - `admin`: the `synapse_compress.*` SQL functions behind `CALL compress_database()`;
//! - `progress`: a room's saved levels (the existing tool's tables);
//! - `owner`: where Synapse's tables are, and running every access to them as their
//!   owner, security-restricted (least privilege);
//! - `store`: the core's `Store` over SPI (reads, locks, set-based writes);
//! - `guard`: containing one chunk's failure (subtransaction, bounded retries);
//! - `subxact`: internal subtransactions;
//! - `errors`: core errors → PostgreSQL errors with SQLSTATE and hint;
//! - `gucs`: settings.

use pgrx::prelude::*;

mod admin;
mod api;
mod errors;
mod guard;
mod gucs;
mod owner;
mod progress;
mod revisit;
mod schedule;
mod store;
mod subxact;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!(
    "../sql/schedule.sql",
    name = "schedule",
    requires = [
        admin::synapse_compress::worker_registered,
        admin::synapse_compress::wake_workers,
        admin::synapse_compress::room_state_groups,
        admin::synapse_compress::room_progress
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

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    // pgrx's test database has no Synapse tables: the extension must still install,
    // and input is checked before any state table is read.
    #[pg_test(error = "invalid levels: size 0 is outside 1..10000")]
    fn levels_are_validated_in_sql() {
        Spi::run("SELECT * FROM compress_room('!x:hs', levels => '0')").unwrap();
    }

    #[pg_test]
    fn status_says_no_worker_without_preload() {
        let registered =
            Spi::get_one::<bool>("SELECT worker_registered FROM synapse_compress.status").unwrap();
        assert_eq!(registered, Some(false));
        let running =
            Spi::get_one::<i32>("SELECT workers_running FROM synapse_compress.status").unwrap();
        assert_eq!(running, Some(0));
    }

    #[pg_test]
    fn rewriting_functions_are_not_granted_to_public() {
        let granted = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p
              WHERE p.proname IN ('compress_room', 'compress_database', 'run_chunk', 'reset_room')
                AND has_function_privilege('public', p.oid, 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(granted, Some(0));
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
