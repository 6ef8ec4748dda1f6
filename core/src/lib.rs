//! The compression algorithm for Synapse's state groups, with no PostgreSQL in it.
//!
//! Data flows one way, one chunk of a room at a time (see `engine`):
//! `Store::load_chunk` → intern into `state` → `planner` → `verify` → `Store::write_chunk`.
//! The PostgreSQL extension implements `Store` over SPI; `memstore` implements it in
//! memory for tests.

pub mod engine;
pub mod error;
pub mod generator;
pub mod hash;
pub mod incremental;
pub mod levels;
pub mod memstore;
pub mod model;
pub mod planner;
pub mod rng;
pub mod state;
pub mod store;
pub mod verify;

pub use engine::{MemoryBudget, Options, Run, Summary};
pub use error::{Error, Result};
pub use levels::{LevelSpec, Levels};
pub use model::{GroupId, RawGroup, StateRow};
pub use store::Store;
