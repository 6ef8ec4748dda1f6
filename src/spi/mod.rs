//! Everything that talks to PostgreSQL through SPI on the engine's behalf:
//! - `store`: the core's `Store` over SPI (reads, locks, set-based writes);
//! - `guard`: containing one chunk's failure (subtransaction, bounded retries);
//! - `locks`: never waiting for a lock while holding others (no deadlock with Synapse);
//! - `subxact`: internal subtransactions, released or rolled back on every path;
//! - `plans`: plans kept across calls for the queries asked for every room;
//! - `settings`: parameters set for one call, as a function's `SET` clause does.

pub mod guard;
pub mod locks;
pub mod plans;
pub mod settings;
pub mod store;
pub mod subxact;
