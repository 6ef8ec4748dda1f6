//! The core's `Store` over SPI: Synapse's state tables, read in bounded chunks, locked
//! the way Synapse's own transactions expect, and rewritten with set-based statements.
//!
//! Every statement is a constant string with bound parameters: no SQL text is ever
//! built from a room id or any other input.
//!
//! Memory: SPI keeps result tables and argument datums in its procedure context until
//! the connection ends, i.e. for a whole run. So every result is freed once read, and
//! every call builds its arguments in a scratch context reset afterwards: backend
//! memory then follows the chunk, not the room.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{
    OwnedPreparedStatement, SpiClient, SpiCursor, SpiHeapTupleData, SpiResult, SpiTupleTable,
};
use pgrx::{FromDatum, IntoDatum, PgMemoryContexts, PgSqlErrorCode, PgTryBuilder};
use synapse_compress_core::engine::memory::{LoadAllowance, LOAD_BATCH_ROWS};
use synapse_compress_core::hash::{FxHashMap, FxHashSet};
use synapse_compress_core::store::{Chain, Chunk, Rewrite, RoomExtent, Store};
use synapse_compress_core::{Error, GroupId, RawGroup, Result, StateRow};

use crate::owner::StateTables;
use crate::spi::locks::{self, Mode};
use crate::spi::plans;
use crate::spi::settings::{with_settings, Setting};
use crate::spi::subxact::SubTransaction;

pub struct SpiStore<'a, 'conn> {
    client: &'a mut SpiClient<'conn>,
    /// Where Synapse's tables are; every statement names them through it (`@s.`).
    tables: StateTables,
    /// Lock what is read (off for dry runs, which must not block Synapse).
    lock: bool,
    /// Synapse >= 1.124 tables; absent on older schemas.
    has_deletion_tables: bool,
    /// The open scan of the room's group ids, and the id it has reached.
    scan: Option<(SpiCursor<'conn>, GroupId)>,
    subxact: Option<SubTransaction>,
    scratch: PgMemoryContexts,
    /// Inside `scratch`: every SPI call is followed by `rescratch`. Shared with the
    /// guard that clears it when `scratch` unwinds.
    in_scratch: Rc<Cell<bool>>,
}

pub fn spi(e: pgrx::spi::SpiError) -> Error {
    Error::Store(e.to_string())
}

/// Free the result table of the last SPI call (pgrx leaves it to SPI_finish).
pub fn free_result() {
    // SAFETY: backend thread; the table was fully read and nothing refers to it.
    unsafe {
        pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
        pg_sys::SPI_tuptable = std::ptr::null_mut();
    }
}

const LOAD_EDGES: &str =
    "SELECT state_group, prev_state_group FROM @s.state_group_edges WHERE state_group = ANY($1)";
const LOAD_ROWS: &str = "SELECT state_group, type, state_key, event_id \
     FROM @s.state_groups_state WHERE state_group = ANY($1)";
const LOAD_ROOMS: &str = "SELECT id, room_id FROM @s.state_groups WHERE id = ANY($1)";
/// A chunk's groups and their stored predecessors (`load_chunk`). The lock clause
/// (`spi::locks::Mode::clause`) is appended. `= ANY (ARRAY(...))`, not a join: with a
/// few hundred ids the planner would hash-join a scan of the whole table (57 ms
/// instead of 8 on 140,000 groups, and growing with them).
const LOCK_CHUNK: &str = "SELECT g.id FROM @s.state_groups g WHERE g.id = ANY (ARRAY( \
       SELECT unnest($1::bigint[]) \
       UNION SELECT prev_state_group FROM @s.state_group_edges WHERE state_group = ANY($1) \
     )) ORDER BY g.id";
/// Rounds of `lock_groups` (take what is free, else wait for one row) before it
/// gives up.
const MAX_LOCK_ROUNDS: usize = 20;
const LOCK_GROUPS: &str = "SELECT g.id FROM @s.state_groups g WHERE g.id = ANY($1) ORDER BY g.id";
const LOAD_FROZEN: &str =
    "SELECT state_group FROM @s.state_groups_pending_deletion WHERE state_group = ANY($1) \
     UNION SELECT state_group FROM @s.state_groups_persisting WHERE state_group = ANY($1)";

/// `tangled`'s query around its seeds (`malformed`): all that Synapse's read reaches
/// from them. UNION (not UNION ALL) ends on cycles.
macro_rules! tangled_query {
    ($seeds:literal, $select:literal) => {
        concat!(
            "WITH RECURSIVE malformed AS (",
            $seeds,
            "), reached(id) AS ( \
                 SELECT e.prev_state_group FROM @s.state_group_edges e \
                 JOIN malformed m ON e.state_group = m.id \
               UNION \
                 SELECT e.prev_state_group FROM @s.state_group_edges e \
                 JOIN reached r ON e.state_group = r.id \
             ) ",
            $select
        )
    };
}

/// `Store::tangled`: seeded by the room's malformed groups, and by the groups of other
/// rooms (or of none) with an edge into it. The room's ids as `= ANY (ARRAY(...))`: as
/// joins, PostgreSQL hashed a scan of every edge for each room (18 ms instead of 5 for a
/// room of 500 groups among 140,000).
const TANGLED_ROOM: &str = tangled_query!(
    "SELECT e.state_group AS id FROM @s.state_group_edges e \
     WHERE e.state_group = ANY (ARRAY(SELECT id FROM @s.state_groups WHERE room_id = $1)) \
     GROUP BY e.state_group \
     HAVING count(*) > 1 OR max(e.prev_state_group) >= e.state_group \
   UNION \
     SELECT e.state_group FROM @s.state_group_edges e \
     WHERE e.prev_state_group = ANY (ARRAY(SELECT id FROM @s.state_groups WHERE room_id = $1)) \
       AND NOT EXISTS (SELECT FROM @s.state_groups c \
                       WHERE c.id = e.state_group AND c.room_id = $1)",
    "SELECT id FROM reached"
);

/// `SpiStore::tangled_by_room`: seeded by every malformed group and every edge between
/// two rooms (or from a group of none), in one scan of the edges. At most `$1` rows.
const TANGLED_ALL: &str = tangled_query!(
    "SELECT e.state_group AS id FROM @s.state_group_edges e \
     GROUP BY e.state_group \
     HAVING count(*) > 1 OR max(e.prev_state_group) >= e.state_group \
   UNION \
     SELECT e.state_group FROM @s.state_group_edges e \
     JOIN @s.state_groups g ON g.id = e.prev_state_group \
     LEFT JOIN @s.state_groups c ON c.id = e.state_group \
     WHERE c.room_id IS DISTINCT FROM g.room_id",
    "SELECT g.room_id, r.id FROM reached r JOIN @s.state_groups g ON g.id = r.id LIMIT $1"
);

/// Whether `TANGLED_ALL`'s scan costs less than `TANGLED_ROOM` for each room of `$1`:
/// measured, the scan takes about 3 µs per edge and a room's query about 10 µs per
/// group of the room (index lookups). Edges unknown (never analyzed): it does not.
const TANGLED_ALL_PAYS: &str =
    "SELECT 3 * (SELECT count(*) FROM @s.state_groups WHERE room_id = ANY($1)) \
     >= (SELECT CASE WHEN c.reltuples < 0 THEN 'Infinity'::pg_catalog.float8 ELSE c.reltuples END \
         FROM pg_catalog.pg_class c WHERE c.oid = $2::pg_catalog.text::pg_catalog.regclass)";

/// How a statement on Synapse's tables is planned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Planning {
    /// Its kept plan (`spi::plans`): a statement on about one row per id, whose best
    /// plan (lookups by id) does not depend on how many ids; or on few state rows.
    Kept,
    /// For its arguments, each time: a statement on many state rows. On 500 groups of
    /// a 50,000-member room (289,458 rows) a bitmap scan read them in 50 ms where the
    /// generic plan's index scan took 124.
    EachTime,
}

/// Rows per group up to which a read or delete of groups' state rows keeps its plan.
/// Planning `= ANY($1)` costs 2-5 µs per id (0.7-1.7 ms on a small room's 337-376 ids,
/// EXPLAIN on the bench's small rooms); the generic plan's index scan costs about 0.25
/// µs per row more than the bitmap scan planned for the ids (124 ms against 50 on
/// 289,458 rows). Keeping pays below 8-20 rows per id.
const KEEP_PLAN_MAX_ROWS_PER_GROUP: f64 = 8.0;

thread_local! {
    /// State rows per group of this backend's last chunk (`None`: none yet). Rooms
    /// differ, but the groups read next are mostly of the same room. A wrong guess
    /// costs a statement's planning, or one read by the generic plan: a large room's
    /// first chunk after small rooms, once.
    static ROWS_PER_GROUP: Cell<Option<f64>> = const { Cell::new(None) };
}

impl Planning {
    /// For a statement on groups' state rows.
    fn for_state_rows() -> Planning {
        match ROWS_PER_GROUP.get() {
            Some(per) if per <= KEEP_PLAN_MAX_ROWS_PER_GROUP => Planning::Kept,
            _ => Planning::EachTime,
        }
    }

    /// What a chunk's read of `groups` groups found: `rows` state rows. (Not chains'
    /// or read-backs': a few groups, or rewritten ones, with fewer rows than the rest.)
    fn observe(groups: usize, rows: usize) {
        if groups > 0 {
            ROWS_PER_GROUP.set(Some(rows as f64 / groups as f64));
        }
    }
}

/// Where `load_groups` takes each group's room from.
#[derive(Clone, Copy)]
enum Rooms<'r> {
    /// `state_groups` (a chain's groups may be of other rooms, or of none).
    Read,
    /// All are of this room (a locked chunk's groups, read from the room's rows): one
    /// read less per chunk.
    Known(&'r str),
    /// Not needed (a read-back, compared on edges and rows only): left `None`.
    Unused,
}

impl<'a, 'conn> SpiStore<'a, 'conn> {
    /// `Store::tangled` of every room whose groups are in `rooms`, by room, when one
    /// scan of all the edges costs less than asking room by room (`None` otherwise, or
    /// when more than `limit` groups are tangled: the rooms then ask for their own).
    ///
    /// A room's share is exactly what `tangled(room)` returns of the room's groups (all
    /// the engine asks of it): a seed outside the room reaches into it only through an
    /// edge entering the room, whose child is itself a seed of `tangled(room)`.
    pub fn tangled_by_room(
        &mut self,
        rooms: &[String],
        limit: usize,
    ) -> Result<Option<FxHashMap<String, FxHashSet<GroupId>>>> {
        self.scratch(|s| {
            let edges = s.tables.sql("@s.state_group_edges");
            let pays = s.one::<bool>(
                TANGLED_ALL_PAYS,
                &[rooms.to_vec().into(), edges.as_str().into()],
            )?;
            if pays != Some(true) {
                return Ok(None);
            }
            // Hash joins would hash every group twice (the rooms at both ends of each
            // edge), each up to work_mem. With hash joins off PostgreSQL chose merge
            // joins, walking the indexes in near heap order (Synapse writes groups and
            // edges in id order); sorts and aggregates get work_mem at most 1 MB (a
            // lower setting stays; the recursive UNION's own table is not bounded by
            // it, and holds only tangled groups). On 550k groups, after the new counts,
            // `CALL compress_database()` peaked at 11.5 MB of private memory, against
            // 14 with hash joins in 1 MB and 35 with the defaults; the scan took 2.0 s
            // against 1.4-2.0.
            // SAFETY: backend thread; PostgreSQL's own global, read only.
            let work_mem_kb = unsafe { pg_sys::work_mem }.min(1024);
            let settings = [
                Setting::new(c"work_mem", format!("{work_mem_kb}kB")),
                Setting::new(c"enable_hashjoin", "off"),
            ];
            let rows = with_settings(&settings, || {
                s.query(TANGLED_ALL, &[(limit as i64 + 1).into()], |row| {
                    Ok((
                        row.get::<String>(1).map_err(spi)?,
                        row.get::<i64>(2).map_err(spi)?,
                    ))
                })
            })?;
            if rows.len() > limit {
                return Ok(None);
            }
            let mut by_room: FxHashMap<String, FxHashSet<GroupId>> = FxHashMap::default();
            for (room, id) in rows {
                if let (Some(room), Some(id)) = (room, id) {
                    by_room.entry(room).or_default().insert(id);
                }
            }
            Ok(Some(by_room))
        })
    }

    /// A store over `tables`; call it as their owner (`Owner::run`).
    pub fn new(
        client: &'a mut SpiClient<'conn>,
        tables: &StateTables,
        lock: bool,
    ) -> SpiResult<Self> {
        let has_deletion_tables = tables.has_deletion_tables();
        let scratch = PgMemoryContexts::new("synapse_compress arguments");
        Ok(SpiStore {
            client,
            tables: tables.clone(),
            lock,
            has_deletion_tables,
            scan: None,
            subxact: None,
            scratch,
            in_scratch: Rc::new(Cell::new(false)),
        })
    }

    /// Run `f` with argument datums allocated in the scratch context, then free them.
    /// Nested calls run in the outer one's context (an inner reset would free the outer
    /// call's arguments).
    fn scratch<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.in_scratch.get() {
            return f(self);
        }
        let cx = self.scratch.value();
        // SAFETY: backend thread; the previous context is restored before returning
        // (an ERROR longjmps past this, and the aborted transaction frees both).
        let old = unsafe { pg_sys::MemoryContextSwitchTo(cx) };
        self.in_scratch.set(true);
        let out = {
            // Unwinding (an ERROR as a Rust panic) leaves the flag clear too.
            struct Leave(Rc<Cell<bool>>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.set(false);
                }
            }
            let _leave = Leave(Rc::clone(&self.in_scratch));
            f(self)
        };
        // SAFETY: as above.
        unsafe {
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::MemoryContextReset(cx);
        }
        out
    }

    /// SPI leaves its procedure context current after every call (`_SPI_end_call`),
    /// and that context lives until the connection ends: the whole `compress_room`
    /// call. So inside `scratch` the scratch context is made current again after each
    /// call; else the next call's arguments (a chunk's ids, the rows it writes, about
    /// 270 bytes per row) would pile up there for the whole room.
    fn rescratch(&self) {
        rescratch(&self.in_scratch, &self.scratch);
    }

    /// Run a query and map each row; the result table is freed before returning.
    fn query<T>(
        &self,
        sql: &str,
        args: &[DatumWithOid],
        f: impl FnMut(&SpiHeapTupleData) -> Result<T>,
    ) -> Result<Vec<T>> {
        let table = self.client.select(&self.tables.sql(sql), None, args);
        self.rows(table, f)
    }

    /// Map each row of a statement's result, then free it.
    fn rows<T>(
        &self,
        table: SpiResult<SpiTupleTable<'_>>,
        mut f: impl FnMut(&SpiHeapTupleData) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.rescratch();
        let out = table.map_err(spi)?.map(|row| f(&row)).collect();
        free_result();
        out
    }

    /// The kept plan of `sql` (`spi::plans`), for the statements every chunk runs on
    /// about one row per id, or on few state rows (`Planning::Kept`).
    fn plan(
        &self,
        sql: &str,
        args: &[DatumWithOid],
        mutating: bool,
    ) -> Result<Rc<OwnedPreparedStatement>> {
        let plan = plans::kept(&*self.client, &self.tables.sql(sql), args, mutating);
        self.rescratch();
        plan
    }

    /// `query` with the kept plan of `sql`.
    fn query_kept<T>(
        &self,
        sql: &str,
        args: &[DatumWithOid],
        f: impl FnMut(&SpiHeapTupleData) -> Result<T>,
    ) -> Result<Vec<T>> {
        let plan = self.plan(sql, args, false)?;
        let table = self.client.select(&*plan, None, args);
        self.rows(table, f)
    }

    /// Run a statement that writes or locks, planned as `planning` says; its result is
    /// freed.
    fn update(&mut self, sql: &str, args: &[DatumWithOid], planning: Planning) -> Result<()> {
        let done = match planning {
            Planning::Kept => {
                let plan = self.plan(sql, args, true)?;
                self.client.update(&*plan, None, args)
            }
            Planning::EachTime => self.client.update(&self.tables.sql(sql), None, args),
        };
        self.rescratch();
        done.map_err(spi)?;
        free_result();
        Ok(())
    }

    /// Lock Synapse's `state_groups` rows selected by `sql` (ids `$1`, alias `g`) and
    /// return the ids locked (a group deleted meanwhile is not). Never waits while
    /// holding another lock of ours (`spi::locks`).
    fn lock_groups(&mut self, sql: &str, ids: &[GroupId]) -> Result<Vec<GroupId>> {
        if locks::held() {
            return self.lock_rows(sql, Mode::NoWait, ids);
        }
        // Mostly nobody holds any of them: NOWAIT takes them all in one statement.
        // Refused, it took none (its subtransaction is undone), and the rounds below
        // find a busy row to wait for. (NOWAIT is for rows: a table lock is waited for
        // up to lock_timeout, whose 55P03 also lands here; holding nothing, the rounds
        // may then wait as long again.)
        let sub = SubTransaction::begin();
        let fast = PgTryBuilder::new(AssertUnwindSafe(|| {
            Some(self.lock_rows(sql, Mode::NoWait, ids))
        }))
        .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| {
            locks::caught(); // handled here
            None
        })
        .execute();
        match fast {
            Some(Ok(got)) => {
                sub.end(true);
                locks::mark_held();
                return Ok(got);
            }
            Some(Err(e)) => {
                sub.end(false);
                return Err(e);
            }
            None => sub.end(false),
        }
        for _ in 0..MAX_LOCK_ROUNDS {
            let sub = SubTransaction::begin();
            let got = self.lock_rows(sql, Mode::SkipLocked, ids)?;
            let taken: FxHashSet<GroupId> = got.iter().copied().collect();
            let busy = self.ids(sql, &[ids.to_vec().into()])?;
            let Some(&wait_for) = busy.iter().find(|id| !taken.contains(id)) else {
                sub.end(true);
                locks::mark_held();
                return Ok(got);
            };
            sub.end(false);
            // Holding nothing now: wait for that row alone, then let go of it.
            let sub = SubTransaction::begin();
            self.lock_rows(LOCK_GROUPS, Mode::Wait, &[wait_for])?;
            sub.end(false);
        }
        // Synapse kept taking rows back (a storm of deletions): refuse, to retry later.
        self.lock_rows(sql, Mode::NoWait, ids)
    }

    fn lock_rows(&mut self, sql: &str, mode: Mode, ids: &[GroupId]) -> Result<Vec<GroupId>> {
        let args: [DatumWithOid; 1] = [ids.to_vec().into()];
        let plan = self.plan(&format!("{sql}{}", mode.clause()), &args, true)?;
        let table = locks::locking(mode, || self.client.update(&*plan, None, &args));
        self.rescratch();
        let table = table.map_err(spi)?;
        let mut out = Vec::with_capacity(ids.len());
        for row in table {
            out.extend(row.get::<i64>(1).map_err(spi)?);
        }
        free_result();
        if mode != Mode::Wait {
            locks::mark_held();
        }
        Ok(out)
    }

    fn ids(&self, sql: &str, args: &[DatumWithOid]) -> Result<Vec<GroupId>> {
        let ids = self.query(sql, args, |row| row.get::<i64>(1).map_err(spi))?;
        Ok(ids.into_iter().flatten().collect())
    }

    /// The ids on `group`'s stored chain (bounded: corrupt data may hold cycles or
    /// forks), nearest first: each at the fewest hops it is reached in.
    fn chain_ids(&self, group: GroupId, max_hops: usize) -> Result<Vec<GroupId>> {
        self.ids(
            "WITH RECURSIVE chain(state_group, hops) AS ( \
                 SELECT $1::bigint, 0 \
               UNION ALL \
                 SELECT e.prev_state_group, c.hops + 1 \
                 FROM @s.state_group_edges e JOIN chain c ON e.state_group = c.state_group \
                 WHERE c.hops < $2 \
             ) SELECT state_group FROM (SELECT state_group, hops FROM chain LIMIT $3) s \
             GROUP BY state_group ORDER BY min(hops)",
            &[
                group.into(),
                (max_hops as i32).into(),
                (2 * max_hops as i64 + 2).into(),
            ],
        )
    }

    fn one<T: IntoDatum + FromDatum>(&self, sql: &str, args: &[DatumWithOid]) -> Result<Option<T>> {
        let mut vals = self.query(sql, args, |row| row.get::<T>(1).map_err(spi))?;
        Ok(if vals.is_empty() {
            None
        } else {
            vals.swap_remove(0)
        })
    }

    fn frozen(&self, ids: &[GroupId]) -> Result<FxHashSet<GroupId>> {
        if !self.has_deletion_tables || ids.is_empty() {
            return Ok(FxHashSet::default());
        }
        let found = self.query_kept(LOAD_FROZEN, &[ids.to_vec().into()], |row| {
            row.get::<i64>(1).map_err(spi)
        })?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Edges, rows and room (`rooms`) of each id, in the order given (set-based reads).
    /// Rows come through a cursor, `LOAD_BATCH_ROWS` at a time, counted against
    /// `max_bytes` as they arrive: a group too large for the memory limit is refused
    /// while it is read, with the database holding one batch, not the whole result.
    fn load_groups(
        &self,
        ids: &[GroupId],
        max_bytes: usize,
        rooms: Rooms,
    ) -> Result<Vec<RawGroup>> {
        let mut groups: FxHashMap<GroupId, RawGroup> = ids
            .iter()
            .map(|&id| {
                (
                    id,
                    RawGroup {
                        id,
                        room_id: match rooms {
                            Rooms::Known(room) => Some(room.to_string()),
                            Rooms::Read | Rooms::Unused => None,
                        },
                        prevs: vec![],
                        rows: vec![],
                    },
                )
            })
            .collect();
        let arg = || -> [DatumWithOid; 1] { [ids.to_vec().into()] };
        if let Rooms::Read = rooms {
            self.query_kept(LOAD_ROOMS, &arg(), |row| {
                let id: GroupId = row.get(1).map_err(spi)?.unwrap_or_default();
                if let Some(g) = groups.get_mut(&id) {
                    g.room_id = row.get::<String>(2).map_err(spi)?;
                }
                Ok(())
            })?;
        }
        self.query_kept(LOAD_EDGES, &arg(), |row| {
            let id: GroupId = row.get(1).map_err(spi)?.unwrap_or_default();
            if let (Some(g), Some(p)) = (groups.get_mut(&id), row.get::<i64>(2).map_err(spi)?) {
                g.prevs.push(p);
            }
            Ok(())
        })?;
        let mut allowance = LoadAllowance::new(max_bytes);
        let args = arg();
        let cursor = match Planning::for_state_rows() {
            Planning::Kept => {
                let plan = self.plan(LOAD_ROWS, &args, false)?;
                self.client.try_open_cursor(&*plan, &args)
            }
            Planning::EachTime => self
                .client
                .try_open_cursor(&self.tables.sql(LOAD_ROWS), &args),
        };
        self.rescratch();
        let mut cursor = cursor.map_err(spi)?;
        loop {
            let batch = cursor.fetch(LOAD_BATCH_ROWS as std::ffi::c_long);
            self.rescratch();
            let batch = batch.map_err(spi)?;
            let fetched = batch.len();
            let read = batch.into_iter().try_for_each(|row| {
                let id: GroupId = row.get(1).map_err(spi)?.unwrap_or_default();
                let text = |i| {
                    row.get::<String>(i)
                        .map_err(spi)
                        .map(Option::unwrap_or_default)
                };
                let r = StateRow::new(&text(2)?, &text(3)?, &text(4)?);
                allowance.row(id, &r)?;
                if let Some(g) = groups.get_mut(&id) {
                    g.rows.push(r);
                }
                Ok(())
            });
            free_result();
            read?;
            allowance.end_batch();
            if fetched < LOAD_BATCH_ROWS {
                break;
            }
        }
        Ok(ids
            .iter()
            .map(|id| groups.remove(id).expect("every id has an entry"))
            .collect())
    }

    fn next_ids(
        &mut self,
        room: &str,
        after: GroupId,
        upto: GroupId,
        limit: usize,
    ) -> Result<Vec<GroupId>> {
        // One scan of the room's ids per run, read `limit` at a time: memory stays
        // bounded by the chunk however large the room.
        // Unlocked: `load_chunk` locks each chunk's groups with their predecessors, in
        // one statement (see `spi::locks`).
        if self.scan.as_ref().map(|(_, at)| *at) != Some(after) {
            self.scan = None;
            // Planned for its arguments: a generic plan cannot tell a range of a few ids
            // from a room's whole range, and ANDed a bitmap of every id in the table
            // with the room's (90 ms instead of 0.6 for a room of 337 groups among
            // 549,121).
            let sql =
                "SELECT id FROM @s.state_groups WHERE room_id = $1 AND id > $2 AND id <= $3 ORDER BY id";
            let args: [DatumWithOid; 3] = [room.into(), after.into(), upto.into()];
            let sql = self.tables.sql(sql);
            let cursor = self.client.try_open_cursor_mut(&sql, &args);
            self.rescratch();
            self.scan = Some((cursor.map_err(spi)?, after));
        }
        let (cursor, _) = self.scan.as_mut().expect("scan is open");
        let batch = cursor.fetch(limit as std::ffi::c_long);
        rescratch(&self.in_scratch, &self.scratch);
        let mut ids = Vec::with_capacity(limit);
        for row in batch.map_err(spi)? {
            ids.extend(row.get::<i64>(1).map_err(spi)?);
        }
        free_result();
        if let (Some(&last), Some((_, at))) = (ids.last(), self.scan.as_mut()) {
            *at = last;
        }
        Ok(ids)
    }
}

impl Store for SpiStore<'_, '_> {
    fn room_extent(&mut self, room: &str) -> Result<RoomExtent> {
        self.scratch(|s| {
            let max = s.one::<i64>(
                "SELECT max(id) FROM @s.state_groups WHERE room_id = $1",
                &[room.into()],
            )?;
            if let Some(max_id) = max {
                return Ok(RoomExtent::Groups { max_id });
            }
            // `rooms` lives in the main store, which may be another database.
            let known = if s.tables.has_rooms_table() {
                s.one::<bool>(
                    "SELECT EXISTS (SELECT 1 FROM @s.rooms WHERE room_id = $1)",
                    &[room.into()],
                )?
            } else {
                None
            };
            Ok(if known == Some(true) {
                RoomExtent::NoGroups
            } else {
                RoomExtent::Unknown
            })
        })
    }

    fn count_groups(&mut self, room: &str, after: GroupId, upto: GroupId) -> Result<u64> {
        self.scratch(|s| {
            let n = s.one::<i64>(
                "SELECT count(*) FROM @s.state_groups WHERE room_id = $1 AND id > $2 AND id <= $3",
                &[room.into(), after.into(), upto.into()],
            )?;
            Ok(n.unwrap_or(0) as u64)
        })
    }

    fn load_chunk(
        &mut self,
        room: &str,
        after: GroupId,
        upto: GroupId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Chunk> {
        self.scratch(|s| {
            let mut ids = s.next_ids(room, after, upto, limit)?;
            if s.lock && !ids.is_empty() {
                // The chunk's groups and their stored predecessors, locked in id order in
                // one statement, before any row is read. Synapse deletes a group, and
                // de-deltas its children, only under FOR UPDATE on it: from now on
                // nothing we plan from can change, and a deletion that committed first
                // is seen by the reads below (its groups are not returned here: they
                // leave the chunk). NO KEY UPDATE lets Synapse keep creating children
                // (FOR KEY SHARE) of these groups.
                let locked: FxHashSet<GroupId> =
                    s.lock_groups(LOCK_CHUNK, &ids)?.into_iter().collect();
                ids.retain(|id| locked.contains(id));
            }
            let frozen = s.frozen(&ids)?;
            // Locked, the ids read from the room's rows are still its groups.
            let rooms = if s.lock {
                Rooms::Known(room)
            } else {
                Rooms::Read
            };
            let groups = s.load_groups(&ids, max_bytes, rooms)?;
            Planning::observe(groups.len(), groups.iter().map(|g| g.rows.len()).sum());
            Ok(Chunk { groups, frozen })
        })
    }

    fn load_chain(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<Chain> {
        self.load_chain_above(group, max_hops, max_bytes, &|_| false)
    }

    fn load_chain_above(
        &mut self,
        group: GroupId,
        max_hops: usize,
        max_bytes: usize,
        known: &dyn Fn(GroupId) -> bool,
    ) -> Result<Chain> {
        // The ids on the stored chain, nearest first, down to the first known one; then
        // their edges and rows. The engine checks the chain's shape.
        self.scratch(|s| {
            let mut ids = s.chain_ids(group, max_hops)?;
            if let Some(i) = ids.iter().skip(1).position(|&id| known(id)) {
                ids.truncate(i + 1);
            }
            let mut by_id: FxHashMap<GroupId, RawGroup> = s
                .load_groups(&ids, max_bytes, Rooms::Read)?
                .into_iter()
                .map(|g| (g.id, g))
                .collect();
            let walked = walk_chain(group, max_hops, |id| by_id.get(&id).map(|g| &g.prevs[..]));
            let groups: Vec<RawGroup> = walked.iter().filter_map(|id| by_id.remove(id)).collect();
            let ids: Vec<GroupId> = groups.iter().map(|g| g.id).collect();
            let frozen = s.frozen(&ids)?;
            Ok(Chain { groups, frozen })
        })
    }

    fn chain_hops(&mut self, group: GroupId, max_hops: usize, _max_bytes: usize) -> Result<usize> {
        // As `load_chain`, from the edges alone: no rows are read.
        self.scratch(|s| {
            let ids = s.chain_ids(group, max_hops)?;
            let mut prevs: FxHashMap<GroupId, Vec<GroupId>> =
                ids.iter().map(|&id| (id, Vec::new())).collect();
            s.query_kept(LOAD_EDGES, &[ids.clone().into()], |row| {
                let id: GroupId = row.get(1).map_err(spi)?.unwrap_or_default();
                if let (Some(ps), Some(p)) = (prevs.get_mut(&id), row.get::<i64>(2).map_err(spi)?) {
                    ps.push(p);
                }
                Ok(())
            })?;
            let walked = walk_chain(group, max_hops, |id| prevs.get(&id).map(|ps| &ps[..]));
            Ok(walked.len().saturating_sub(1))
        })
    }

    fn tangled(&mut self, room: &str) -> Result<FxHashSet<GroupId>> {
        self.scratch(|s| Ok(s.ids(TANGLED_ROOM, &[room.into()])?.into_iter().collect()))
    }

    fn write_chunk(&mut self, room: &str, rewrites: &[Rewrite]) -> Result<()> {
        let ids: Vec<GroupId> = rewrites.iter().map(|r| r.group).collect();
        let (mut edge_from, mut edge_to) = (Vec::new(), Vec::new());
        let (mut g, mut t, mut k, mut e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in rewrites {
            if let Some(p) = r.prev {
                edge_from.push(r.group);
                edge_to.push(p);
            }
            for row in &r.rows {
                g.push(r.group);
                t.push(row.event_type());
                k.push(row.state_key());
                e.push(row.event_id());
            }
        }
        let mut prevs = edge_to.clone();
        prevs.sort_unstable();
        prevs.dedup();
        self.scratch(|s| {
            // New predecessors get a no-op update, not just the FOR KEY SHARE lock
            // Synapse takes when it adds a child: its deletion runs at REPEATABLE READ
            // and, after waiting for a mere lock, would go on with a snapshot that does
            // not show our new edges, delete the predecessor and leave our group
            // dangling. A new row version makes its FOR UPDATE fail with a
            // serialization error instead; Synapse retries, sees the new children and
            // de-deltas them. (The lock this takes, FOR NO KEY UPDATE, still lets
            // Synapse add children.) A predecessor already deleted is not updated:
            // the chunk is abandoned.
            if s.lock && !prevs.is_empty() {
                // Predecessors read as part of a chain are not locked yet: lock them
                // as every later lock is taken (`spi::locks`), then update.
                s.lock_groups(LOCK_GROUPS, &prevs)?;
                let want = prevs.len();
                let args: [DatumWithOid; 1] = [prevs.clone().into()];
                let plan = s.plan(
                    "UPDATE @s.state_groups SET event_id = event_id WHERE id = ANY($1) RETURNING id",
                    &args,
                    true,
                )?;
                let table = s.client.update(&*plan, None, &args);
                s.rescratch();
                let got = table.map_err(spi)?.len();
                free_result();
                if got != want {
                    return Err(Error::Concurrent {
                        group: prevs[0],
                        reason: format!("{} chosen predecessors were deleted meanwhile", want - got),
                    });
                }
                // The planner never takes a group pending deletion or being persisted,
                // but it may have read one before Synapse marked it (a node cached from
                // an earlier statement, slice or chunk): checked again here. (Synapse
                // marks without a lock, so a mark committed after this is not seen; the
                // no-op update above covers that one.)
                if let Some(&group) = s.frozen(&prevs)?.iter().min() {
                    return Err(Error::Concurrent {
                        group,
                        reason: "a chosen predecessor was marked for deletion, or is being \
                                 persisted, meanwhile"
                            .into(),
                    });
                }
            }
            s.update(
                "DELETE FROM @s.state_group_edges WHERE state_group = ANY($1)",
                &[ids.clone().into()],
                Planning::Kept,
            )?;
            if !edge_from.is_empty() {
                s.update(
                    "INSERT INTO @s.state_group_edges (state_group, prev_state_group) \
                     SELECT * FROM unnest($1::bigint[], $2::bigint[])",
                    &[edge_from.into(), edge_to.into()],
                    Planning::Kept,
                )?;
            }
            let planning = Planning::for_state_rows();
            s.update(
                "DELETE FROM @s.state_groups_state WHERE state_group = ANY($1)",
                &[ids.into()],
                planning,
            )?;
            if !g.is_empty() {
                s.update(
                    "INSERT INTO @s.state_groups_state (state_group, room_id, type, state_key, event_id) \
                     SELECT u.g, $2, u.t, u.k, u.e \
                     FROM unnest($1::bigint[], $3::text[], $4::text[], $5::text[]) AS u(g, t, k, e)",
                    &[g.into(), room.into(), t.into(), k.into(), e.into()],
                    Planning::Kept,
                )?;
            }
            Ok(())
        })
    }

    fn read_back(&mut self, groups: &[GroupId]) -> Result<Vec<RawGroup>> {
        // The engine charged the rows read back with the rewrite (`rewrite_bytes`).
        self.scratch(|s| s.load_groups(groups, usize::MAX, Rooms::Unused))
    }

    fn begin_atomic(&mut self) -> Result<()> {
        self.scan = None;
        self.subxact = Some(SubTransaction::begin());
        Ok(())
    }

    fn end_atomic(&mut self, keep: bool) -> Result<()> {
        // The scan's portal belongs to the subtransaction: close it first.
        self.scan = None;
        if let Some(s) = self.subxact.take() {
            s.end(keep);
        }
        Ok(())
    }

    fn check_interrupts(&mut self) {
        pgrx::check_for_interrupts!();
    }
}

/// `SpiStore::rescratch` over the two fields it needs (callable while another field is
/// borrowed).
fn rescratch(in_scratch: &Cell<bool>, scratch: &PgMemoryContexts) {
    if in_scratch.get() {
        // SAFETY: backend thread; the context lives as long as the store.
        unsafe {
            pg_sys::MemoryContextSwitchTo(scratch.value());
        }
    }
}

/// The groups of `group`'s chain as `Store::load_chain` returns them: from the group,
/// following single edges to groups that were read (`prevs_of` gives `None` for the
/// others), at most `max_hops` hops, ending before a group seen already (a cycle).
fn walk_chain<'a>(
    group: GroupId,
    max_hops: usize,
    prevs_of: impl Fn(GroupId) -> Option<&'a [GroupId]>,
) -> Vec<GroupId> {
    let mut walked = Vec::new();
    let mut seen = FxHashSet::default();
    let mut cur = Some(group);
    while let Some(id) = cur {
        if !seen.insert(id) {
            break;
        }
        let Some(prevs) = prevs_of(id) else { break };
        cur = match prevs {
            [p] if walked.len() < max_hops => Some(*p),
            _ => None,
        };
        walked.push(id);
    }
    walked
}
