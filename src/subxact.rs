//! An internal subtransaction, as PL/pgSQL's EXCEPTION blocks use: lets
//! `compress_room` undo all its writes when the result would not pay off, while still
//! returning its summary in the caller's transaction.

use pgrx::pg_sys;

pub struct SubTransaction {
    memory: pg_sys::MemoryContext,
    owner: pg_sys::ResourceOwner,
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
            SubTransaction { memory, owner }
        }
    }

    pub fn end(self, keep: bool) {
        // SAFETY: pairs with `begin`; nothing opened inside (cursors) outlives it.
        unsafe {
            if keep {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(self.memory);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }
}
