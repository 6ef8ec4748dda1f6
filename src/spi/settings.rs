//! Parameters set for the length of one call, as a function's `SET` clause sets them.

use pgrx::pg_sys;
use std::ffi::{CStr, CString};

/// One parameter for `with_settings`; the value is owned so callers can format it.
pub struct Setting {
    pub name: &'static CStr,
    pub value: CString,
}

impl Setting {
    pub fn new(name: &'static CStr, value: impl Into<Vec<u8>>) -> Setting {
        Setting {
            name,
            value: CString::new(value).expect("a setting's value has no NUL"),
        }
    }
}

/// Run `f` with `settings` in a GUC nest level of its own, restored when `f` returns.
///
/// If `f` raises an ERROR, the (sub)transaction that catches it closes the nest level
/// on abort (`AtEOXact_GUC`), as it does for a function's `SET` clause.
pub fn with_settings<T>(settings: &[Setting], f: impl FnOnce() -> T) -> T {
    // SAFETY: backend thread, inside a transaction (every caller runs in one); the nest
    // level opened here is closed below or by the abort of the enclosing transaction.
    let nest = unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        for s in settings {
            pg_sys::set_config_option(
                s.name.as_ptr(),
                s.value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        nest
    };
    let out = f();
    // SAFETY: pairs with NewGUCNestLevel above.
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
    out
}
