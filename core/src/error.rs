//! The one error type of the compressor. The extension maps each variant to a
//! PostgreSQL SQLSTATE at the SQL boundary (`src/errors.rs`).

use crate::model::GroupId;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A caller-supplied argument is out of range or malformed.
    InvalidArgument { name: &'static str, reason: String },
    /// The levels string does not parse or is out of bounds.
    InvalidLevels(String),
    /// No state group and no `rooms` row has this room id.
    UnknownRoom(String),
    /// The room exists (in `rooms`) but owns no state groups.
    NoStateGroups(String),
    /// A planned rewrite failed verification: a bug, never written.
    Verification { group: GroupId, reason: String },
    /// The database no longer holds what was just written or planned from.
    Concurrent { group: GroupId, reason: String },
    /// The storage layer failed (message from the database).
    Store(String),
    /// Synapse's state tables are not in the configured schema.
    NoStateTables { schema: String, table: &'static str },
    /// The tables cannot be rewritten without running someone's code with more
    /// rights than theirs (mixed owners, a view in a table's place, a caller without
    /// the privileges itself).
    Unsafe { reason: String, hint: String },
    /// The run needs more memory than its limit: one group's state, with what must be
    /// held beside it, does not fit even after every cache was shed. Nothing was
    /// written. `needed` and `limit` are bytes; `group` is the first group that did not
    /// fit, when known.
    MemoryLimit {
        group: Option<GroupId>,
        needed: u64,
        limit: u64,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { name, reason } => write!(f, "invalid {name}: {reason}"),
            Error::InvalidLevels(reason) => write!(f, "invalid levels: {reason}"),
            Error::UnknownRoom(room) => write!(
                f,
                "room {room:?} has no state groups and is not a known room"
            ),
            Error::NoStateGroups(room) => write!(f, "room {room:?} has no state groups"),
            Error::Verification { group, reason } => {
                write!(f, "verification failed for state group {group}: {reason}")
            }
            Error::Concurrent { group, reason } => {
                write!(
                    f,
                    "state group {group} changed during compression: {reason}"
                )
            }
            Error::Store(msg) => write!(f, "storage error: {msg}"),
            Error::NoStateTables { schema, table } => {
                write!(f, "no table {table} in schema {schema:?}")
            }
            Error::Unsafe { reason, .. } => write!(f, "refusing to compress: {reason}"),
            Error::MemoryLimit {
                group,
                needed,
                limit,
            } => {
                let kb = |b: &u64| b.div_ceil(1024);
                match group {
                    Some(g) => write!(
                        f,
                        "state group {g} needs at least {} kB of memory",
                        kb(needed)
                    )?,
                    None => write!(f, "compression needs at least {} kB of memory", kb(needed))?,
                }
                write!(f, ", more than the memory limit of {} kB", kb(limit))
            }
        }
    }
}

impl std::error::Error for Error {}
