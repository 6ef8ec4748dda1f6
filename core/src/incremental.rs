//! The scheduled one-chunk driver, kept under its old path: it lives in
//! `engine::chunk` (see `engine`).

pub use crate::engine::{
    compress_chunk, ChunkLimits, ChunkOutcome, ChunkResult, Progress, MAX_CHUNK_GROWTH,
};
