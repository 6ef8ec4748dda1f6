//! The engine's one memory accounting (`Options::memory_limit`).
//!
//! Everything a run holds is estimated in bytes from lengths and capacities, and
//! charged here before (or as) it is held:
//!
//! - the slice's raw groups as the store returned them, and while they are loaded the
//!   database's result set they were read from (freed by the store when it returns);
//! - the string dictionary, by capacity, as it grows;
//! - every resolved state and own state of the slice, groups resolved below it, the
//!   plan's nodes, and chains read to resolve them (their raw rows while read);
//! - the write buffers: each rewrite's rows, the database's copy of them, and the rows
//!   read back to check them;
//! - what is kept between slices: placements, the dictionary and the cached nodes.
//!
//! `charge` refuses what would pass the limit, with nothing taken; the engine then
//! sheds its caches and retries the slice smaller (see `run`). Each heap allocation is
//! counted with `ALLOC_OVERHEAD` bytes on top of what it asks for.

use std::mem::size_of;

use crate::error::{Error, Result};
use crate::model::{RawGroup, StateRow};
use crate::store::Rewrite;

pub use crate::state::{map_bytes, vec_bytes, ALLOC_OVERHEAD};

/// A database-side copy of one row (tuple header, slot pointer, allocation headers,
/// and a detoasted copy of each text while it is converted), beyond twice its text.
pub const DB_ROW_OVERHEAD: usize = 160;

/// Bytes charged against a limit; never more than the limit.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: usize,
    peak: usize,
    /// The most charged at once since the last `rebase`.
    recent_peak: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: 0,
            peak: 0,
            recent_peak: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used
    }

    /// The most ever charged at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Bytes still free.
    pub fn available(&self) -> usize {
        self.limit - self.used
    }

    /// Take `bytes` more, or fail with `Error::MemoryLimit` and nothing taken if that
    /// would pass the limit.
    pub fn charge(&mut self, bytes: usize) -> Result<()> {
        let after = self.used.saturating_add(bytes);
        if after > self.limit {
            return Err(Error::MemoryLimit {
                group: None,
                needed: after as u64,
                limit: self.limit as u64,
            });
        }
        self.used = after;
        self.peak = self.peak.max(after);
        self.recent_peak = self.recent_peak.max(after);
        Ok(())
    }

    /// Start over from `held` bytes (what is kept between slices, estimated anew).
    pub fn rebase(&mut self, held: usize) -> Result<()> {
        self.used = 0;
        self.recent_peak = 0;
        self.charge(held)
    }

    /// The most charged at once since the last `rebase`.
    pub fn recent_peak(&self) -> usize {
        self.recent_peak
    }

    /// Give back bytes charged before.
    pub fn release(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.used, "released more than was charged");
        self.used = self.used.saturating_sub(bytes);
    }
}

fn string_bytes(s: &str, capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        capacity.max(s.len()) + ALLOC_OVERHEAD
    }
}

/// A row's texts, as the database holds them while passing the row.
fn db_row_bytes(r: &StateRow) -> usize {
    DB_ROW_OVERHEAD + 2 * (r.event_type.len() + r.state_key.len() + r.event_id.len())
}

/// One row held by the engine (its slot in the row vector counted by the caller).
fn row_bytes(r: &StateRow) -> usize {
    string_bytes(&r.event_type, r.event_type.capacity())
        + string_bytes(&r.state_key, r.state_key.capacity())
        + string_bytes(&r.event_id, r.event_id.capacity())
}

/// A group as loaded: the engine's copy, and the database's copy it was read from
/// (which the store frees before it returns, so the engine charges it only for the
/// load itself).
pub fn raw_group_bytes(g: &RawGroup) -> (usize, usize) {
    let engine = size_of::<RawGroup>()
        + g.room_id
            .as_ref()
            .map_or(0, |r| string_bytes(r, r.capacity()))
        + vec_bytes::<i64>(g.prevs.capacity())
        + vec_bytes::<StateRow>(g.rows.capacity())
        + g.rows.iter().map(row_bytes).sum::<usize>();
    (engine, g.rows.iter().map(db_row_bytes).sum())
}

/// Charge groups just loaded: both copies, then give back the database's.
pub fn charge_loaded(budget: &mut MemoryBudget, groups: &[RawGroup]) -> Result<Vec<usize>> {
    let (mut engine, mut database) = (Vec::with_capacity(groups.len()), 0);
    for g in groups {
        let (e, d) = raw_group_bytes(g);
        engine.push(e);
        database += d;
    }
    budget.charge(engine.iter().sum::<usize>() + database)?;
    budget.release(database);
    Ok(engine)
}

/// A rewrite's write buffers, estimated before its rows are built: each row's slot
/// and three strings, and the database's copy of them as statement arguments; then the
/// group as read back to check it, as large again. `text` is the rows' text bytes.
pub fn rewrite_bytes(rows: usize, text: usize) -> usize {
    let once = size_of::<Rewrite>()
        + size_of::<RawGroup>()
        + vec_bytes::<StateRow>(rows)
        + rows * (3 * ALLOC_OVERHEAD + DB_ROW_OVERHEAD)
        + 3 * text;
    2 * once
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_refuses_past_the_limit_and_takes_nothing() {
        let mut b = MemoryBudget::new(100);
        b.charge(60).unwrap();
        let e = b.charge(41).unwrap_err();
        assert_eq!(
            e,
            Error::MemoryLimit {
                group: None,
                needed: 101,
                limit: 100
            }
        );
        assert_eq!(b.used(), 60);
        b.charge(40).unwrap();
        assert_eq!(b.peak(), 100);
        b.release(100);
        assert_eq!((b.used(), b.peak()), (0, 100));
    }

    #[test]
    fn raw_groups_cost_at_least_their_text_twice() {
        let g = RawGroup {
            id: 1,
            room_id: Some("!r:hs".into()),
            prevs: vec![],
            rows: vec![StateRow::new("m.room.member", "@a:hs", "$e")],
        };
        let (engine, database) = raw_group_bytes(&g);
        let text = "m.room.member@a:hs$e".len();
        assert!(engine > text && database >= 2 * text + DB_ROW_OVERHEAD);
    }
}
