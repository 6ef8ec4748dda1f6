//! Internal subtransactions, as PL/pgSQL's EXCEPTION blocks use: `compress_room` undoes
//! all its writes when the result would not pay off, and a scheduled chunk that fails
//! is rolled back alone.

use pgrx::pg_sys;

use crate::spi::locks;

pub struct SubTransaction {
    memory: pg_sys::MemoryContext,
    owner: pg_sys::ResourceOwner,
    /// Nesting level of this subtransaction.
    level: i32,
    /// Whether the transaction held locks on Synapse's rows before (restored on
    /// rollback, which releases the locks taken inside).
    locks: Option<pg_sys::TransactionId>,
}

impl SubTransaction {
    pub fn begin() -> SubTransaction {
        // SAFETY: called on the backend's thread inside a transaction; the saved
        // context and owner are restored when the subtransaction ends.
        unsafe {
            let memory = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(memory);
            let level = pg_sys::GetCurrentTransactionNestLevel();
            SubTransaction {
                memory,
                owner,
                level,
                locks: locks::remembered(),
            }
        }
    }

    /// Keep (release) or undo (roll back) the subtransaction. Undoing also rolls back
    /// any subtransaction begun inside it and left open by an error that unwound past
    /// its owner: the caller's transaction is back at the level it began at.
    pub fn end(self, keep: bool) {
        // SAFETY: pairs with `begin`; nothing opened inside (cursors) outlives it.
        unsafe {
            if keep {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                while pg_sys::GetCurrentTransactionNestLevel() >= self.level {
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                }
                locks::restore(self.locks);
            }
            pg_sys::MemoryContextSwitchTo(self.memory);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }
}

/// Where the caller's transaction stands, to return there if an error unwinds through
/// code that began subtransactions (the error is then re-raised).
pub struct Level {
    memory: pg_sys::MemoryContext,
    owner: pg_sys::ResourceOwner,
    level: i32,
    locks: Option<pg_sys::TransactionId>,
}

impl Level {
    pub fn here() -> Level {
        // SAFETY: reading backend globals on the backend's thread.
        unsafe {
            Level {
                memory: pg_sys::CurrentMemoryContext,
                owner: pg_sys::CurrentResourceOwner,
                level: pg_sys::GetCurrentTransactionNestLevel(),
                locks: locks::remembered(),
            }
        }
    }

    /// Roll back every subtransaction begun since `here()`. Without this, a caller that
    /// catches the error (a PL/pgSQL EXCEPTION block) would roll back our inner
    /// subtransaction instead of its own, and keep its block's writes.
    pub fn unwind(&self) {
        // SAFETY: only subtransactions begun after `here()` are rolled back.
        unsafe {
            while pg_sys::GetCurrentTransactionNestLevel() > self.level {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            locks::restore(self.locks);
            pg_sys::MemoryContextSwitchTo(self.memory);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }
}
