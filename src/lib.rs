//! synapse_compress: compress Synapse's state tables inside PostgreSQL.
//!
//! The algorithm lives in the `synapse_compress_core` crate (no PostgreSQL in it).
//! This crate is the thin layer around it:
//! - `api`: the SQL-callable functions;
//! - `store`: the core's `Store` over SPI (reads, locks, set-based writes);
//! - `subxact`: undoing a whole run's writes when it would not pay off;
//! - `errors`: core errors → PostgreSQL errors with SQLSTATE and hint;
//! - `gucs`: settings.

use pgrx::prelude::*;

mod api;
mod errors;
mod gucs;
mod store;
mod subxact;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn levels_are_validated_in_sql() {
        let r = std::panic::catch_unwind(|| {
            Spi::run("SELECT * FROM compress_room('!x:hs', levels => '0')").unwrap();
        });
        assert!(r.is_err());
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
