//! The SQL boundary for errors: each core error becomes a PostgreSQL ERROR with a
//! SQLSTATE a client can act on and a hint a human can.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys::panic::{CaughtError, ErrorReport, ErrorReportWithLevel};
use pgrx::{PgLogLevel, PgSqlErrorCode, PgTryBuilder};
use synapse_compress_core::Error;

/// Raise `err` as an ERROR. Never returns; the transaction (and any write) aborts.
pub fn raise(err: Error) -> ! {
    let (code, hint) = code_and_hint(&err);
    report(code, err.to_string(), hint)
}

/// The SQLSTATE of a core error.
pub fn sqlstate(err: &Error) -> PgSqlErrorCode {
    code_and_hint(err).0
}

/// The five-character SQLSTATE (PostgreSQL packs it in 6-bit characters).
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let mut packed = code as i32;
    (0..5)
        .map(|_| {
            let c = char::from(b'0' + (packed & 0x3F) as u8);
            packed >>= 6;
            c
        })
        .collect()
}

fn code_and_hint(err: &Error) -> (PgSqlErrorCode, String) {
    match err {
        Error::InvalidArgument { name, .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("Pass a valid {name}; see COMMENT ON FUNCTION compress_room."),
        ),
        Error::InvalidLevels(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Levels are comma-separated chain lengths, finest first, each 1-10000, at most 10 of them, e.g. '100,50,25'.".into(),
        ),
        Error::UnknownRoom(_) => (
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "Room ids look like '!abc:example.org'; list rooms with: SELECT room_id, count(*) FROM state_groups GROUP BY 1 ORDER BY 2 DESC.".into(),
        ),
        Error::NoStateGroups(_) => (
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            "The room has no state to compress (it may have been purged).".into(),
        ),
        Error::Verification { .. } => (
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "Nothing was written. This is a bug in synapse_compress: please report it with this message.".into(),
        ),
        Error::Concurrent { .. } => (
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "Something else changed the room's state groups meanwhile; nothing was written. Retry.".into(),
        ),
        Error::Store(_) => (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "Nothing was written.".into()),
        Error::NoStateTables { .. } => (
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "Point synapse_compress at the schema holding Synapse's state tables: \
             SELECT synapse_compress.set_state_schema('schema').".into(),
        ),
        Error::Unsafe { hint, .. } => (PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, hint.clone()),
        Error::MemoryLimit { .. } => (
            PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
            "Nothing was written. Raise synapse_compress.memory_limit (e.g. SET synapse_compress.memory_limit = '1GB') for this room.".into(),
        ),
    }
}

/// Raise an ERROR with a given SQLSTATE and hint.
pub fn report(code: PgSqlErrorCode, message: String, hint: String) -> ! {
    ErrorReport::new(code, message, "synapse_compress")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// The body of a SQL function. An ERROR that PostgreSQL raises inside it (a
/// serialization failure, a deadlock, a permission check) reaches the client as
/// PostgreSQL raised it: left to pgrx, its DETAIL would carry the Rust backtrace
/// whenever the server runs with RUST_BACKTRACE set. `cleanup` runs first (e.g. to
/// roll back subtransactions begun inside).
pub fn boundary<T>(cleanup: impl Fn(), body: impl FnOnce() -> T) -> T {
    let cleanup = AssertUnwindSafe(cleanup);
    PgTryBuilder::new(AssertUnwindSafe(body))
        .catch_others(move |caught| {
            (*cleanup)();
            match caught {
                CaughtError::PostgresError(r) => reraise(&r),
                other => other.rethrow(),
            }
        })
        .execute()
}

/// `boundary` with nothing to clean up.
pub fn clean<T>(body: impl FnOnce() -> T) -> T {
    boundary(|| {}, body)
}

fn reraise(r: &ErrorReportWithLevel) -> ! {
    let mut e = ErrorReport::new(
        r.sql_error_code(),
        r.message().to_string(),
        "synapse_compress",
    );
    if let Some(detail) = r.detail() {
        e = e.set_detail(detail);
    }
    if let Some(hint) = r.hint().or_else(|| retry_hint(r.sql_error_code())) {
        e = e.set_hint(hint);
    }
    e.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// What to do about the errors a rewrite beside a live Synapse can meet.
pub fn retry_hint(code: PgSqlErrorCode) -> Option<&'static str> {
    match code {
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => Some(
            "Synapse held a lock on the room's state groups longer than synapse_compress.lock_timeout; \
             nothing was written. Retry later, or raise the setting.",
        ),
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
        | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED => Some(
            "Synapse changed the room's state groups meanwhile; nothing of this transaction was \
             kept. Retry it.",
        ),
        _ => None,
    }
}

/// Reject a NULL argument the way PostgreSQL's own functions do.
pub fn required<T>(value: Option<T>, name: &str) -> T {
    match value {
        Some(v) => v,
        None => null_argument(name, format!("Pass a value for {name}.")),
    }
}

/// `required` for an argument with a default: the hint says it may be left out.
pub fn or_default<T>(value: Option<T>, name: &str) -> T {
    match value {
        Some(v) => v,
        None => null_argument(
            name,
            format!("Pass a value for {name}, or leave it out to use its default."),
        ),
    }
}

fn null_argument(name: &str, hint: String) -> ! {
    report(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{name} must not be NULL"),
        hint,
    )
}
