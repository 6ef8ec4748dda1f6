//! Test and benchmark scaffolding for synapse_compress, kept out of the production
//! crate (`synapse_compress_core`), which uses it only as a dev-dependency:
//!
//! - `generator`: deterministic (by seed) Synapse-shaped state data, and the
//!   `synapse-compress-gen` binary that writes it as COPY SQL for psql;
//! - `memstore`: an in-memory `Store`, and an independent oracle of Synapse's read
//!   query (`MemStore::resolve`);
//! - `rng`: the small deterministic RNG both use.

pub mod generator;
pub mod memstore;
pub mod rng;
