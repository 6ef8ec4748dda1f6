//! Containing the failure of one unit of scheduled work, as PL/pgSQL's EXCEPTION blocks
//! do: the unit runs in a subtransaction; an error (from PostgreSQL or the core) rolls
//! back only that unit and is returned. Serialization failures and deadlocks are retried
//! a few times, as Synapse retries its own transactions.
//!
//! Errors that must stop the whole statement are re-raised, never swallowed: query
//! cancel and statement_timeout, shutdown, and resource exhaustion (out of memory,
//! disk full), which would only fail again on the next room.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use synapse_compress_core::Error;

use crate::errors;
use crate::spi::locks;
use crate::spi::subxact::SubTransaction;

pub const MAX_ATTEMPTS: u32 = 3;

/// Why a unit failed, for the room's record.
#[derive(Debug)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
    pub attempts: u32,
    /// A row was refused (`NOWAIT`) while the transaction held locks taken before the
    /// unit (an earlier room of a batch): not the room's fault, and a retry in this
    /// transaction cannot help, since rolling the unit back does not release them.
    pub refused_holding: bool,
}

enum Attempt<T> {
    Done(T),
    Failed(PgSqlErrorCode, String),
    Rethrow(Box<CaughtError>),
}

/// Run `body` in a subtransaction; keep its writes if it returns `Ok`.
pub fn contained<T>(mut body: impl FnMut() -> Result<T, Error>) -> Result<T, Failure> {
    let held_before = locks::held();
    let mut attempt = 0;
    loop {
        attempt += 1;
        locks::caught(); // what an earlier error left
        let sub = SubTransaction::begin();
        match try_once(&mut body, must_propagate) {
            Attempt::Done(v) => {
                sub.end(true);
                return Ok(v);
            }
            Attempt::Rethrow(caught) => {
                sub.end(false);
                caught.rethrow();
            }
            Attempt::Failed(code, message) => {
                // A refusal to wait while holding locks (`spi::locks`): the rollback
                // releases the unit's own, and the retry may wait, unless locks taken
                // before the unit are still held.
                let refused = locks::caught() == Some(locks::Mode::NoWait)
                    && code == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE;
                let refused_holding = refused && held_before;
                sub.end(false);
                let transient = matches!(
                    code,
                    PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
                        | PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
                        | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
                );
                // At REPEATABLE READ (a database's default_transaction_isolation) a
                // retry in this transaction would see the same snapshot and fail the
                // same way: leave it to the next chunk's transaction.
                if transient
                    && !refused_holding
                    && attempt < MAX_ATTEMPTS
                    && !snapshot_per_transaction()
                {
                    continue;
                }
                return Err(Failure {
                    sqlstate: errors::sqlstate_text(code),
                    message,
                    attempts: attempt,
                    refused_holding,
                });
            }
        }
    }
}

/// Run optional work, whose failure only costs speed, in a subtransaction: its writes
/// are kept if it returns `Ok`; any error (from PostgreSQL or the core) undoes it and
/// comes back as its message, even a resource error (class 53: the work it saves is
/// done another way, in smaller pieces). Query cancel, timeouts, shutdown and system
/// errors (classes 57 and 58) are re-raised.
pub fn optional<T>(body: impl FnOnce() -> Result<T, Error>) -> Result<T, String> {
    let sub = SubTransaction::begin();
    let stops: fn(PgSqlErrorCode) -> bool = |code| {
        let state = errors::sqlstate_text(code);
        state.starts_with("57") || state.starts_with("58")
    };
    match try_once(body, stops) {
        Attempt::Done(v) => {
            sub.end(true);
            Ok(v)
        }
        Attempt::Rethrow(caught) => {
            sub.end(false);
            caught.rethrow();
        }
        Attempt::Failed(code, message) => {
            sub.end(false);
            Err(format!(
                "{message} (SQLSTATE {})",
                errors::sqlstate_text(code)
            ))
        }
    }
}

/// One try of `body`: its result, or the error it raised, unless `propagate` says the
/// error's SQLSTATE must go on up (then it is to be re-raised).
fn try_once<T>(
    body: impl FnOnce() -> Result<T, Error>,
    propagate: fn(PgSqlErrorCode) -> bool,
) -> Attempt<T> {
    PgTryBuilder::new(AssertUnwindSafe(|| match body() {
        Ok(v) => Attempt::Done(v),
        Err(e) => Attempt::Failed(errors::sqlstate(&e), e.to_string()),
    }))
    .catch_others(|caught| match &caught {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r)
            if !propagate(r.sql_error_code()) =>
        {
            Attempt::Failed(r.sql_error_code(), r.message().to_string())
        }
        _ => Attempt::Rethrow(Box::new(caught)),
    })
    .execute()
}

/// Whether this transaction keeps one snapshot (REPEATABLE READ or SERIALIZABLE).
pub fn snapshot_per_transaction() -> bool {
    // SAFETY: reading a backend global on the backend's thread.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// Classes 53 (insufficient resources), 57 (operator intervention: cancel, timeout,
/// shutdown) and 58 (system error).
fn must_propagate(code: PgSqlErrorCode) -> bool {
    let state = errors::sqlstate_text(code);
    state.starts_with("53") || state.starts_with("57") || state.starts_with("58")
}
