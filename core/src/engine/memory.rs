//! The engine's one memory accounting (`Options::memory_limit`).
//!
//! Everything a run holds is estimated in bytes from lengths and capacities, and
//! charged here before (or as) it is held:
//!
//! - the slice's raw groups as the store returned them, and while they are loaded the
//!   database's result set they were read from (freed by the store when it returns);
//! - the string dictionary, by capacity, as it grows;
//! - every resolved state and own state of the slice, groups resolved below it, the
//!   plan's nodes, and chains read to resolve them (their raw rows while read). A
//!   resolved state that shares its predecessor's base (`State`) is charged its own
//!   layer only: the base was charged with the state that brought it;
//! - the write buffers: each rewrite's rows, the database's copy of them, and the rows
//!   read back to check them;
//! - what is kept between slices: placements, the dictionary and the cached nodes.
//!
//! `charge` refuses what would pass the limit, with nothing taken; the engine then
//! sheds its caches and retries the slice smaller (see `run`). Each heap allocation is
//! counted with `ALLOC_OVERHEAD` bytes on top of what it asks for.

use std::mem::size_of;

use crate::error::{Error, Result};
use crate::model::{GroupId, RawGroup, StateRow};
use crate::store::Rewrite;

pub use crate::state::{map_bytes, vec_bytes, ALLOC_OVERHEAD};

/// Rows a store reads at a time (a cursor's batch): while loading, the database holds
/// one batch's copy, never the whole load's.
pub const LOAD_BATCH_ROWS: usize = 4096;

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

    /// Run a store's load with what is still free as its allowance (`Store::load_chunk`);
    /// a refusal is reported against the whole limit.
    pub fn load<T>(&self, f: impl FnOnce(usize) -> Result<T>) -> Result<T> {
        f(self.available()).map_err(|e| match e {
            Error::MemoryLimit { group, needed, .. } => Error::MemoryLimit {
                group,
                needed: needed.saturating_add(self.used as u64),
                limit: self.limit as u64,
            },
            e => e,
        })
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
pub fn db_row_bytes(r: &StateRow) -> usize {
    DB_ROW_OVERHEAD + 2 * r.text_len()
}

/// One row held by the engine (its slot in the row vector counted by the caller).
fn row_bytes(r: &StateRow) -> usize {
    if r.text_len() == 0 {
        0
    } else {
        r.text_len() + ALLOC_OVERHEAD
    }
}

/// One row as the engine holds it once loaded: its slot in the group's row vector
/// (twice, for the vector's growth) and its texts' one allocation. A store checks a load
/// against its allowance with this as it reads (`Store::load_chunk`).
pub fn loaded_row_bytes(r: &StateRow) -> usize {
    2 * size_of::<StateRow>() + row_bytes(r)
}

/// A group as loaded: the engine's copy, and the database's copy it was read from
/// (one batch of rows at a time; the store frees it before it returns, so the engine
/// charges it only for the load itself).
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

/// The database's copy at its largest while `rows` rows of `total` bytes are read in
/// batches of `LOAD_BATCH_ROWS`: one batch of average rows.
pub fn db_batch_bytes(total: usize, rows: usize) -> usize {
    if rows <= LOAD_BATCH_ROWS {
        total
    } else {
        (total as u128 * LOAD_BATCH_ROWS as u128).div_ceil(rows as u128) as usize
    }
}

/// Charge groups just loaded: the engine's copy and the database's largest batch,
/// then give back the database's.
pub fn charge_loaded(budget: &mut MemoryBudget, groups: &[RawGroup]) -> Result<Vec<usize>> {
    let (mut engine, mut database, mut rows) = (Vec::with_capacity(groups.len()), 0, 0);
    for g in groups {
        let (e, d) = raw_group_bytes(g);
        engine.push(e);
        database += d;
        rows += g.rows.len();
    }
    let database = db_batch_bytes(database, rows);
    budget.charge(engine.iter().sum::<usize>() + database)?;
    budget.release(database);
    Ok(engine)
}

/// What a store loaded so far against the allowance it was given: fails as soon as
/// the engine's rows plus the database's batch would pass it, so a group larger than
/// the memory limit is refused while it is read, not after.
#[derive(Debug)]
pub struct LoadAllowance {
    max_bytes: usize,
    engine: usize,
    batch: usize,
    largest_batch: usize,
}

impl LoadAllowance {
    pub fn new(max_bytes: usize) -> LoadAllowance {
        LoadAllowance {
            max_bytes,
            engine: 0,
            batch: 0,
            largest_batch: 0,
        }
    }

    /// Count one row read for `group`.
    pub fn row(&mut self, group: GroupId, r: &StateRow) -> Result<()> {
        self.engine += loaded_row_bytes(r);
        self.batch += db_row_bytes(r);
        self.check(group)
    }

    /// The database's batch was freed.
    pub fn end_batch(&mut self) {
        self.largest_batch = self.largest_batch.max(self.batch);
        self.batch = 0;
    }

    fn check(&self, group: GroupId) -> Result<()> {
        let held = self.engine + self.largest_batch.max(self.batch);
        if held > self.max_bytes {
            return Err(Error::MemoryLimit {
                group: Some(group),
                needed: held as u64,
                limit: self.max_bytes as u64,
            });
        }
        Ok(())
    }
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

    fn member() -> StateRow {
        StateRow::new(
            "m.room.member",
            "@someone:example.org",
            "$abcdefghijklmnopqrstuvwxyz0123456789",
        )
    }

    #[test]
    fn a_load_is_refused_at_the_row_that_passes_the_allowance() {
        let r = member();
        let one = loaded_row_bytes(&r) + db_row_bytes(&r);
        let mut a = LoadAllowance::new(100 * one);
        let mut read = 0;
        let err = loop {
            match a.row(7, &r) {
                Ok(()) => read += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(read, 100, "refused late or early");
        match err {
            Error::MemoryLimit {
                group: Some(7),
                needed,
                limit,
            } => assert!(needed > limit && limit == 100 * one as u64),
            e => panic!("expected MemoryLimit, got {e:?}"),
        }
    }

    #[test]
    fn the_database_copy_counts_one_batch_not_the_whole_load() {
        let r = member();
        let rows = 3 * LOAD_BATCH_ROWS;
        let need = rows * loaded_row_bytes(&r) + LOAD_BATCH_ROWS * db_row_bytes(&r);
        let read = |max: usize| -> Result<()> {
            let mut a = LoadAllowance::new(max);
            for i in 1..=rows {
                a.row(1, &r)?;
                if i % LOAD_BATCH_ROWS == 0 {
                    a.end_batch();
                }
            }
            Ok(())
        };
        read(need).unwrap();
        assert!(read(need - 1).is_err());
        // charge_loaded agrees with what the store was allowed.
        let g = RawGroup {
            id: 1,
            room_id: None,
            prevs: vec![],
            rows: vec![r.clone(); rows],
        };
        let (engine, database) = raw_group_bytes(&g);
        assert_eq!(
            db_batch_bytes(database, rows),
            LOAD_BATCH_ROWS * db_row_bytes(&r)
        );
        assert!(engine + db_batch_bytes(database, rows) <= need);
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
