//! Settings, all under `synapse_compress.*`. The README's "Settings" table lists them.
//!
//! `database`, `role` and `workers` are read when the server starts (the worker is
//! registered then); the worker's schedule reloads on SIGHUP; the rest can also be set
//! per session for `compress_room` and `CALL compress_database()`.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use synapse_compress_core::schedule::Window;

/// Groups per chunk: for scheduled runs, transaction length (memory: `MEMORY_LIMIT`).
pub static CHUNK_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
/// kB the engine may hold at once (`engine::memory`); like `work_mem`, with units.
pub static MEMORY_LIMIT: GucSetting<i32> =
    GucSetting::<i32>::new((synapse_compress_core::engine::DEFAULT_MEMORY_LIMIT >> 10) as i32);
/// Seconds between progress NOTICEs of a long compress_room.
pub static PROGRESS_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5);

pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"synapse"));
pub static ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static LEVELS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"100,50,25"));
pub static MAX_RUN_TIME: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAX_RUN_CHUNKS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MIN_SAVED_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static CHUNK_PAUSE: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static TARGET_CHUNK_TIME: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static HISTORY_DAYS: GucSetting<i32> = GucSetting::<i32>::new(30);
/// Time of day scheduled runs may work in (`core::schedule::Window`); empty: always.
pub static WINDOW: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Longest wait for a row lock on Synapse's tables before a chunk gives up (ms).
pub static LOCK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Most scheduled workers; each takes its own room, so more than the cores is waste.
pub const MAX_WORKERS: i32 = 8;

/// Define the settings; the worker's (`database`, `role`, `workers`) only while the
/// library is preloaded, the one time PostgreSQL accepts postmaster-level settings.
pub fn init(preloading: bool) {
    if preloading {
        define_worker_settings();
    }
    GucRegistry::define_int_guc(
        c"synapse_compress.chunk_size",
        c"State groups read, planned, verified and written per chunk.",
        c"Scheduled runs commit once per chunk. Memory is bounded by synapse_compress.memory_limit, which reads a chunk in smaller slices when it must.",
        &CHUNK_SIZE,
        1,
        synapse_compress_core::engine::MAX_CHUNK_SIZE as i32,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.memory_limit",
        c"Most memory a compression holds at once (chunk, caches, write buffers).",
        c"When a chunk would not fit, it is read in smaller slices; a state group too big to fit alone fails the room with SQLSTATE 53200, nothing written. The backend uses up to a fixed overhead more (see the README).",
        &MEMORY_LIMIT,
        64,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_KB,
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
    GucRegistry::define_bool_guc(
        c"synapse_compress.enabled",
        c"Whether the background worker starts scheduled runs.",
        c"synapse_compress.pause() pauses without a configuration change, and survives restarts.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.interval",
        c"Seconds from the end of one scheduled run to the start of the next.",
        c"synapse_compress.run_now() starts one at once.",
        &INTERVAL,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"synapse_compress.levels",
        c"Levels for rooms without saved levels (comma-separated chain lengths, finest first).",
        c"Rooms already compressed keep the levels saved in state_compressor_state.",
        &LEVELS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.max_run_time",
        c"Seconds after which a scheduled run stops at the next chunk boundary (0: no limit).",
        c"The next run continues where it stopped.",
        &MAX_RUN_TIME,
        0,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.max_run_chunks",
        c"Chunks after which a scheduled run stops (0: no limit).",
        c"",
        &MAX_RUN_CHUNKS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.min_saved_rows",
        c"A scheduled chunk is undone unless it removes at least this many rows.",
        c"At least 1: a room never grows.",
        &MIN_SAVED_ROWS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.lock_timeout",
        c"Longest wait for a lock on Synapse's tables; then the chunk is given up and retried later (0: PostgreSQL's lock_timeout).",
        c"Holding locks while waiting for others would make Synapse's own transactions queue behind the compressor.",
        &LOCK_TIMEOUT,
        0,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.chunk_pause",
        c"Milliseconds a scheduled run sleeps between chunks, leaving Synapse its share.",
        c"",
        &CHUNK_PAUSE,
        0,
        60_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.target_chunk_time",
        c"If set, scheduled runs adapt the chunk size so a chunk's transaction takes about this many milliseconds (0: fixed chunk_size).",
        c"",
        &TARGET_CHUNK_TIME,
        0,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.history_days",
        c"Days of run history kept in synapse_compress.runs.",
        c"",
        &HISTORY_DAYS,
        1,
        3650,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: a static setting and a guarded check hook, as DefineCustomStringVariable
    // wants them.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"synapse_compress.window",
            c"Time of day the background worker may compress in, e.g. '01:00-06:00' in the server's time zone (empty: always).",
            c"A start after the end wraps midnight. Runs start only inside it and stop at the next chunk boundary when it ends. CALL compress_database() ignores it.",
            &WINDOW,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_window),
            None,
            None,
        );
    }
    reserve_prefix();
}

/// Make `synapse_compress.<typo>` an error (PostgreSQL 15+; 14 only warns), after
/// every setting of this process is defined. Without preloading, the worker's
/// settings are not defined: a `synapse_compress.database` placeholder is then
/// removed with a WARNING (it does nothing without preloading anyway).
fn reserve_prefix() {
    // SAFETY: backend thread, a static C string.
    unsafe {
        #[cfg(feature = "pg14")]
        pgrx::pg_sys::EmitWarningsOnPlaceholders(c"synapse_compress".as_ptr());
        #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17", feature = "pg18"))]
        pgrx::pg_sys::MarkGUCPrefixReserved(c"synapse_compress".as_ptr());
    }
}

/// The check hook of `synapse_compress.window`: a malformed window is refused where it
/// is set (SET, ALTER SYSTEM; in postgresql.conf a reload logs it and keeps the old
/// value), so the worker never sees one.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_window(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the candidate value (NULL: unset).
    let text = unsafe {
        let v = *newval;
        if v.is_null() {
            return true;
        }
        std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned()
    };
    match Window::parse(&text) {
        Ok(_) => true,
        Err(e) => {
            let detail = CString::new(e.to_string()).unwrap_or_default();
            // SAFETY: GUC_check_errdetail: a palloc'd string the GUC machinery reports.
            unsafe {
                pgrx::pg_sys::GUC_check_errdetail_string = pgrx::pg_sys::pstrdup(detail.as_ptr());
                pgrx::pg_sys::GUC_check_errhint_string = pgrx::pg_sys::pstrdup(
                    c"Use HH:MM-HH:MM in the server's time zone, e.g. '01:00-06:00' (a start after the end wraps midnight), or '' for always.".as_ptr(),
                );
            }
            false
        }
    }
}

/// The window in force. Never malformed (the check hook), but should it be: closed,
/// so a setting meant to keep runs out of busy hours never lets them in.
pub fn window() -> Option<Window> {
    Window::parse(&text(&WINDOW)).ok()
}

fn define_worker_settings() {
    GucRegistry::define_string_guc(
        c"synapse_compress.database",
        c"Database the background worker compresses (the Synapse database).",
        c"Read at server start. The worker waits quietly until CREATE EXTENSION synapse_compress has run there.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"synapse_compress.role",
        c"Role the background worker connects as (empty: the bootstrap superuser).",
        c"It needs SELECT, INSERT, UPDATE, DELETE on the state tables and the synapse_compress tables; see the README.",
        &ROLE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse_compress.workers",
        c"Background workers compressing rooms in parallel (0: none).",
        c"Each works on a different room. Read at server start.",
        &WORKERS,
        0,
        MAX_WORKERS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// A string setting as text ("" when unset).
pub fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `memory_limit` in bytes.
pub fn memory_limit() -> usize {
    (MEMORY_LIMIT.get().max(1) as usize) << 10
}
