//! Never wait for a lock on Synapse's rows while holding others: the rule that keeps a
//! deadlock with Synapse's deletion from forming.
//!
//! Synapse's deletion locks the groups it deletes `FOR UPDATE`, several in one
//! statement. A rewrite that holds some of them (an earlier chunk or slice, or an
//! earlier `compress_room` in the caller's transaction) and then waits for another
//! that the deletion already holds closes a cycle: PostgreSQL ends it after
//! `deadlock_timeout` with 40P01, and Synapse's deletion loop (one room at a time for
//! the whole server) stalls meanwhile. Whatever order Synapse locks in, no cycle can
//! form through a transaction that waits only while holding nothing:
//! - A transaction holding no lock of ours takes a chunk's groups and their stored
//!   predecessors in one statement, `NOWAIT` (mostly nobody holds any of them). If
//!   that is refused, it took none; then `SKIP LOCKED` finds which are held by another
//!   transaction: it lets go of all (a subtransaction rolled back), waits for one such
//!   row alone (up to `synapse_compress.lock_timeout`), lets go of it, and tries again.
//! - A transaction already holding some (a later chunk or slice, or an earlier
//!   `compress_room` in the caller's transaction) takes any more `NOWAIT`. A refusal
//!   rolls the unit back, which releases its locks, and the unit is retried holding
//!   nothing; `compress_room` in a transaction that held locks before it was called
//!   instead gives up without raising, so that transaction's work is kept.
//!
//! "Holding" is tracked per top-level transaction: the id of the transaction that
//! took a lock is remembered, and a subtransaction rolled back restores what was
//! remembered before it began (`SubTransaction`), as its locks are released too.

use std::cell::Cell;

use pgrx::pg_sys;

thread_local! {
    /// The top-level transaction that holds row locks we took on Synapse's tables.
    static HELD_BY: Cell<Option<pg_sys::TransactionId>> = const { Cell::new(None) };
    /// The mode of the lock statement that last raised an error (see `caught`).
    static FAILED: Cell<Option<Mode>> = const { Cell::new(None) };
}

fn top_xid() -> Option<pg_sys::TransactionId> {
    // SAFETY: reading transaction state on the backend's thread.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    (xid != pg_sys::InvalidTransactionId).then_some(xid)
}

/// Whether this transaction holds row locks we took on Synapse's tables.
pub fn held() -> bool {
    let top = top_xid();
    top.is_some() && HELD_BY.get() == top
}

/// Locks were just taken (a row lock gives the transaction its id).
pub fn mark_held() {
    HELD_BY.set(top_xid());
}

/// What `held` remembers, to restore when a subtransaction is rolled back.
pub fn remembered() -> Option<pg_sys::TransactionId> {
    HELD_BY.get()
}

pub fn restore(saved: Option<pg_sys::TransactionId>) {
    HELD_BY.set(saved);
}

/// How a statement locks Synapse's `state_groups` rows (alias `g`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait (up to `lock_timeout`): only for one row, holding no other.
    Wait,
    /// Take what no other transaction holds, and say nothing of the rest.
    SkipLocked,
    /// Refuse at once (55P03) if another transaction holds one.
    NoWait,
}

impl Mode {
    /// The locking clause to append to the statement.
    pub fn clause(self) -> &'static str {
        match self {
            Mode::Wait => " FOR NO KEY UPDATE OF g",
            Mode::SkipLocked => " FOR NO KEY UPDATE OF g SKIP LOCKED",
            Mode::NoWait => " FOR NO KEY UPDATE OF g NOWAIT",
        }
    }
}

/// Run a lock statement. If it raises, its mode is kept for whoever catches the error
/// (`caught`).
pub fn locking<T>(mode: Mode, f: impl FnOnce() -> T) -> T {
    struct Noted(Mode);
    impl Drop for Noted {
        fn drop(&mut self) {
            // Unwinding: the statement raised (pgrx turns a PostgreSQL ERROR into a
            // panic that unwinds through here).
            if std::thread::panicking() {
                FAILED.set(Some(self.0));
            }
        }
    }
    FAILED.set(None);
    let _noted = Noted(mode);
    f()
}

/// Which lock statement the lock_not_available (55P03) just caught came from:
/// `NoWait`, a refusal to wait while holding locks; `Wait`, `lock_timeout` spent
/// waiting for one row while holding none; anything else (`SkipLocked` waiting for a
/// table lock, or `None`: the room's advisory lock, another statement) is not ours to
/// retry. Reading it clears it; each attempt clears it first, so an error caught
/// elsewhere earlier cannot be read as this one's.
pub fn caught() -> Option<Mode> {
    FAILED.replace(None)
}
