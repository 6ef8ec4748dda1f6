//! Settings, all under `synapse_compress.*`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Groups per chunk: bounds backend memory (and, for the worker, transaction length).
pub static CHUNK_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
/// Seconds between progress NOTICEs of a long compress_room.
pub static PROGRESS_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5);

pub fn init() {
    GucRegistry::define_int_guc(
        c"synapse_compress.chunk_size",
        c"State groups read, planned, verified and written per chunk.",
        c"Memory of a compression is bounded by this many groups (times their state size). Default 500.",
        &CHUNK_SIZE,
        1,
        synapse_compress_core::engine::MAX_CHUNK_SIZE as i32,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.progress_interval",
        c"Seconds between progress NOTICEs of a long compress_room (0: after every chunk).",
        c"",
        &PROGRESS_INTERVAL,
        0,
        3600,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
}
