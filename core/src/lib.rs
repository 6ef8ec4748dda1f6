//! The compression algorithm for Synapse's state groups, with no PostgreSQL in it.
//!
//! Data flows one way, one chunk of a room at a time (see `engine`):
//! `Store::load_chunk` → intern into `state` → `planner` → `verify` → `Store::write_chunk`.
//! The PostgreSQL extension implements `Store` over SPI; the `synapse_compress_testkit`
//! crate implements it in memory for tests.

pub mod engine;
pub mod error;
/// The hash maps the core uses: rustc-hash's FxHash. std's SipHash guards against hash
/// flooding, which matters for untrusted network input but costs a lot here, where maps
/// are keyed by interned ids and state strings of a bounded chunk.
pub mod hash {
    pub use rustc_hash::{FxHashMap, FxHashSet};
}
pub mod levels;
pub mod model;
pub mod planner;
pub mod schedule;
pub mod state;
pub mod store;
pub mod verify;

pub use engine::{MemoryBudget, Options, Run, Summary};
pub use error::{Error, Result};
pub use levels::{LevelSpec, Levels};
pub use model::{GroupId, RawGroup, StateRow};
pub use store::Store;
