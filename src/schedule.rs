//! Scheduled compression: one run walks the rooms with the most to gain, one chunk per
//! transaction (or several small rooms: `policy::next_in_batch`). The background worker
//! and `CALL compress_database()` both drive it (`begin_run`, then `step` until it says
//! how the run ends, then `end_run`): `step` applies the one run policy
//! (`Source::run_end_before_chunk`) and runs the next chunk through the core's one
//! rewrite path (`engine::compress_chunk`).
//!
//! A chunk's rewrite, the room's saved levels and progress, and the run's counters
//! commit together, so a crash neither loses nor repeats work. A room that fails is
//! recorded with its error and retried later with backoff; other rooms go on.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use synapse_compress_core::engine::{
    self, Carried, ChunkLimits, ChunkOutcome, ChunkResult, Phases, Progress,
};
use synapse_compress_core::hash::{FxHashMap, FxHashSet};
use synapse_compress_core::schedule::{self as policy, Boundary, Budget, Outcome, RunEnd};
use synapse_compress_core::{Error, GroupId, LevelSpec, Levels, Result};

use crate::owner::{Access, StateTables};
use crate::spi::plans::{exec, one};
use crate::spi::store::{free_result, spi, SpiStore};
use crate::spi::{guard, plans};
use crate::{errors, gucs, progress, revisit};

pub use synapse_compress_core::schedule::Source;

/// What one chunk of a run did.
#[derive(Clone, Debug)]
pub struct Step {
    /// What the step did; `failed` is recorded on the room, `no_work` ends the run.
    pub outcome: Outcome,
    pub room_id: Option<String>,
    pub groups: i64,
    pub groups_changed: i64,
    pub rows_before: i64,
    pub rows_after: i64,
    pub message: Option<String>,
    /// Where the chunk's time went in the engine (the rest of the step's is bookkeeping).
    pub phases: Phases,
    /// Chunks this step took: one, or several small rooms (`policy::next_in_batch`).
    pub chunks: u64,
    /// The last chunk left its room without work (`policy::room_done`).
    room_done: bool,
    /// The group the last chunk reached (the run's `current_group`).
    position: i64,
    /// Time in the engine, for `policy::adapt_chunk_size`.
    engine_ms: i64,
}

impl Step {
    fn new(outcome: Outcome, room_id: Option<String>) -> Step {
        Step {
            outcome,
            room_id,
            groups: 0,
            groups_changed: 0,
            rows_before: 0,
            rows_after: 0,
            message: None,
            phases: Phases::default(),
            chunks: 0,
            room_done: false,
            position: 0,
            engine_ms: 0,
        }
    }

    /// Rows the chunk removed.
    fn saved(&self) -> i64 {
        if self.outcome == Outcome::Written {
            self.rows_before - self.rows_after
        } else {
            0
        }
    }

    /// The step so far, with `chunk` added: the counts add up, the rest is the last
    /// chunk's (a failure ends a step, so its message is the one the driver sees).
    fn then(mut self, chunk: Step) -> Step {
        let mut phases = self.phases;
        phases.merge(&chunk.phases);
        self.chunks += 1;
        Step {
            groups: self.groups + chunk.groups,
            groups_changed: self.groups_changed + chunk.groups_changed,
            rows_before: self.rows_before + chunk.rows_before,
            rows_after: self.rows_after + chunk.rows_after,
            phases,
            chunks: self.chunks,
            engine_ms: self.engine_ms + chunk.engine_ms,
            ..chunk
        }
    }
}

/// What `run_chunk` did.
enum Taken {
    /// A chunk ran, or failed and was recorded on its room.
    Chunk(Step),
    /// No room (in a batch: none small enough) has work.
    NoRoom,
    /// In a batch, the room's rows were held by another transaction, and this one may
    /// not wait while it holds the batch's earlier rooms' (`spi::locks`): nothing was
    /// recorded on it, and the next step takes it first. `position`: its progress.
    Deferred { room: String, position: i64 },
}

/// What a step adds to its run's row in `synapse_compress.runs` (one statement per
/// step, however many rooms it took).
#[derive(Default)]
struct RunTally {
    rooms: i32,
    not_saved: i64,
    errors: i64,
    saved: i64,
}

impl RunTally {
    /// Count `chunk`, done after a chunk of `previous` (the run's current room).
    fn add(&mut self, chunk: &Step, previous: Option<&str>) {
        self.rooms += i32::from(chunk.room_id.as_deref() != previous);
        self.not_saved += i64::from(chunk.outcome == Outcome::NotSaved);
        self.errors += i64::from(chunk.outcome == Outcome::Failed);
        self.saved += chunk.saved();
    }
}

/// The levels new rooms get.
fn default_levels() -> Result<LevelSpec> {
    LevelSpec::parse(&gucs::text(&gucs::LEVELS))
}

/// A room's own levels (`synapse_compress.set_room_levels`, read by `pick_room`), if it
/// has any. A stored value that does not parse (written to the table by hand) is
/// ignored with a WARNING.
fn room_levels(room: &str, text: Option<String>) -> Option<LevelSpec> {
    text.and_then(|t| match LevelSpec::parse(&t) {
        Ok(spec) => Some(spec),
        Err(e) => {
            pgrx::warning!("synapse_compress: room {room}: its levels setting is ignored: {e}");
            None
        }
    })
}

/// Groups created since the last run's watermark, per room.
#[derive(Default)]
struct NewGroups {
    rooms: Vec<String>,
    groups: Vec<i64>,
    rows: Vec<i64>,
}

/// The newest group id, the snapshot it was read in (for `revisit`'s late commits)
/// and, above `scanned`, the new groups and rows of each room (an index range scan,
/// never the whole table again). Run as the tables' owner.
fn count_new_groups(
    client: &SpiClient<'_>,
    tables: &StateTables,
    scanned: i64,
) -> Result<(i64, String, NewGroups)> {
    let table = client
        .select(
            &tables.sql(
                "SELECT coalesce(max(id), 0), pg_catalog.pg_current_snapshot()::text                  FROM @s.state_groups",
            ),
            None,
            &[],
        )
        .map_err(spi)?;
    let (upto, snapshot) = table.first().get_two::<i64, String>().map_err(spi)?;
    free_result();
    let (upto, snapshot) = (upto.unwrap_or(0), snapshot.unwrap_or_default());
    let mut new = NewGroups::default();
    if upto <= scanned {
        return Ok((upto, snapshot, new));
    }
    // Two aggregates by room, not one by group joined to the groups: a first run counts
    // every group, and grouping by group (its statistics say 2% distinct) misestimates
    // and spills (on 550k groups: 3 s and 14 MB of the backend against 0.7 s and 1 MB).
    // Rows are counted by the room their rows name, which Synapse writes as the group's:
    // these counts only order the queue.
    let (progress, groups_after, rows_after) = if tables.has_tool_tables() {
        (
            "LEFT JOIN @s.state_compressor_progress p ON p.room_id = x.room_id",
            "AND x.id > coalesce(p.last_compressed, 0)",
            "AND x.state_group > coalesce(p.last_compressed, 0)",
        )
    } else {
        ("", "", "")
    };
    let sql = tables.sql(&format!(
        "SELECT g.room_id, g.n, coalesce(r.n, 0)::bigint \
         FROM (SELECT x.room_id, count(*) AS n FROM @s.state_groups x {progress} \
               WHERE x.id > $1 AND x.id <= $2 {groups_after} GROUP BY x.room_id) g \
         LEFT JOIN (SELECT x.room_id, count(*) AS n FROM @s.state_groups_state x {progress} \
                    WHERE x.state_group > $1 AND x.state_group <= $2 {rows_after} \
                    GROUP BY x.room_id) r ON r.room_id = g.room_id"
    ));
    let table = client
        .select(&sql, None, &[scanned.into(), upto.into()])
        .map_err(spi)?;
    for row in table {
        let room: Option<String> = row.get(1).map_err(spi)?;
        let groups: Option<i64> = row.get(2).map_err(spi)?;
        let rows: Option<i64> = row.get(3).map_err(spi)?;
        if let Some(room) = room {
            new.rooms.push(room);
            new.groups.push(groups.unwrap_or(0));
            new.rows.push(rows.unwrap_or(0));
        }
    }
    free_result();
    Ok((upto, snapshot, new))
}

/// Start a run: close runs whose backend is gone, prune history, bring the room queue
/// up to date with the groups created since the last run, and record the run. Groups
/// created after this point are left to the next run.
pub fn begin_run(client: &mut SpiClient<'_>, source: Source) -> Result<i64> {
    let started = Instant::now();
    // A run cancelled midway in this session never reached `end_run`.
    forget_run_caches();
    default_levels()?;
    exec(
        client,
        "UPDATE synapse_compress.runs r SET outcome = 'crashed', finished_at = clock_timestamp() \
         WHERE r.outcome = 'running' AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
             WHERE a.pid = r.pid AND a.backend_start IS NOT DISTINCT FROM r.backend_start)",
        &[],
    )?;
    exec(
        client,
        "DELETE FROM synapse_compress.runs WHERE finished_at < now() - make_interval(days => $1)",
        &[gucs::HISTORY_DAYS.get().into()],
    )?;
    // The row lock serialises concurrent starts (several workers, a procedure).
    let scanned: i64 = one(
        client,
        "SELECT scanned_upto FROM synapse_compress.control FOR UPDATE",
        &[],
    )?
    .ok_or_else(|| Error::Store("synapse_compress.control has no row".into()))?;
    let mut tables = StateTables::resolve(client, Access::Write)?;
    // Here, before any chunk holds Synapse's rows: creating them may wait for another
    // creator, and a chunk never waits while it holds a lock.
    tables.owner().run(|| tables.ensure_tool_tables(client))?;
    let (upto, snapshot, new_groups) = tables
        .owner()
        .run(|| count_new_groups(client, &tables, scanned))?;
    // Groups below rooms' progress that Synapse de-deltaed or that committed late.
    let found = revisit::at_run_start(client, &tables, upto, &snapshot)?;
    if found.rooms > 0 {
        pgrx::log!(
            "synapse_compress: {} rooms sent back ({} with de-deltaed groups, {} with late groups)",
            found.rooms,
            found.dedeltas,
            found.late
        );
    }
    if upto > scanned {
        // Rooms an adopted tool had already compressed past are not counted again.
        exec(
            client,
            "INSERT INTO synapse_compress.room_queue AS q (room_id, pending_groups, pending_rows) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (room_id) DO UPDATE \
                SET pending_groups = q.pending_groups + excluded.pending_groups, \
                    pending_rows = q.pending_rows + excluded.pending_rows",
            &[
                new_groups.rooms.into(),
                new_groups.groups.into(),
                new_groups.rows.into(),
            ],
        )?;
        exec(
            client,
            "UPDATE synapse_compress.control SET scanned_upto = $1",
            &[upto.into()],
        )?;
    }
    let run: i64 = one(
        client,
        "INSERT INTO synapse_compress.runs (source, backend_start, upto, chunk_size, rooms_excluded) \
         SELECT $1, (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()), $2, $3, \
                (SELECT count(*) FROM synapse_compress.room_queue q \
                 JOIN synapse_compress.room_settings s ON s.room_id = q.room_id \
                 WHERE s.excluded AND q.pending_groups > 0) \
         RETURNING run_id",
        &[source.as_str().into(), upto.into(), gucs::CHUNK_SIZE.get().into()],
    )?
    .ok_or_else(|| Error::Store("no run id".into()))?;
    pgrx::debug1!(
        "synapse_compress: run {run} started in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(run)
}

pub fn end_run(
    client: &mut SpiClient<'_>,
    run: i64,
    outcome: &str,
    message: Option<&str>,
) -> Result<()> {
    let outcome = RunEnd::parse(outcome)?.as_str();
    // What the run kept for its chunks goes with it.
    forget_run_caches();
    exec(
        client,
        "UPDATE synapse_compress.runs SET outcome = $2, finished_at = clock_timestamp(), message = $3, \
             current_room = NULL, current_group = NULL \
         WHERE run_id = $1 AND outcome = 'running'",
        &[run.into(), outcome.into(), message.into()],
    )
}

struct RunRow {
    upto: i64,
    chunk_size: i32,
    current_room: Option<String>,
    source: Source,
    /// `synapse_compress.control`'s, read with the run.
    paused: bool,
    /// The minute of the local day, for `synapse_compress.window`.
    minute: Option<u32>,
}

fn load_run(client: &SpiClient<'_>, run: i64) -> Result<RunRow> {
    let args: [DatumWithOid; 1] = [run.into()];
    let plan = plans::kept(
        client,
        "SELECT r.upto, r.chunk_size, r.current_room, r.source, c.paused, \
                (extract(hour FROM localtime) * 60 + extract(minute FROM localtime))::int \
         FROM synapse_compress.runs r LEFT JOIN synapse_compress.control c ON true \
         WHERE r.run_id = $1 AND r.outcome = 'running'",
        &args,
        false,
    )?;
    let table = client.select(&*plan, None, &args).map_err(spi)?;
    if table.is_empty() {
        free_result();
        return Err(Error::InvalidArgument {
            name: "run_id",
            reason: format!("run {run} is not running"),
        });
    }
    let row = table.first();
    let (upto, chunk_size, current_room) = row.get_three::<i64, i32, String>().map_err(spi)?;
    let source: Option<String> = row.get(4).map_err(spi)?;
    let paused: Option<bool> = row.get(5).map_err(spi)?;
    let minute: Option<i32> = row.get(6).map_err(spi)?;
    free_result();
    Ok(RunRow {
        upto: upto.unwrap_or(0),
        chunk_size: chunk_size.unwrap_or(500),
        current_room,
        source: Source::parse(source.as_deref().unwrap_or(""))?,
        paused: paused.unwrap_or(false),
        minute: minute.and_then(|m| u32::try_from(m).ok()),
    })
}

/// Which queue rows (`q`) a run may take: work left, not backing off after a failure,
/// not among the rooms this pick already found taken (`$3`).
const ELIGIBLE: &str = "q.pending_groups > 0 AND (q.next_retry IS NULL OR q.next_retry <= now()) \
     AND q.room_id <> ALL($3)";

/// A few rooms to try, best first: the run's current room (`$1`) while it has work, then
/// by priority (`room_settings`), then the most uncompressed rows; never an excluded
/// room. To fill a batch (`fill`), only rooms with fewer than `$2` groups pending, so
/// each is done in the batch (one of exactly `$2` would need an empty chunk to learn
/// that), and those without a priority largest first by groups: few batches. A branch
/// per kind: the rooms without settings are read in the order of one of the queue's
/// indexes, a few at a time, and the rooms with a priority from their settings. One
/// ordered query over every pending room took 1.5 ms a step with 2,000 rooms, and grew
/// with them.
fn candidates_sql(fill: bool) -> String {
    let eligible = if fill {
        format!("{ELIGIBLE} AND q.pending_groups < $2")
    } else {
        ELIGIBLE.to_string()
    };
    let settings = |priority: &str, class: u8| {
        format!(
            "(SELECT q.room_id, s.levels, {class}, s.priority, -q.pending_rows \
              FROM synapse_compress.room_settings s \
              JOIN synapse_compress.room_queue q ON q.room_id = s.room_id \
              WHERE s.priority {priority} AND NOT s.excluded AND {eligible} \
              ORDER BY s.priority DESC, q.pending_rows DESC, q.room_id LIMIT 8)"
        )
    };
    // room_queue_fill's order, or room_queue_pending's.
    let (rank, order) = if fill {
        ("-q.pending_groups", "q.pending_groups DESC, q.room_id")
    } else {
        ("-q.pending_rows", "q.pending_rows DESC, q.room_id")
    };
    format!(
        "SELECT c.room_id, c.levels FROM ( \
           (SELECT q.room_id, s.levels, 0, 0, 0::bigint \
              FROM synapse_compress.room_queue q \
              LEFT JOIN synapse_compress.room_settings s ON s.room_id = q.room_id \
              WHERE q.room_id = $1 AND NOT coalesce(s.excluded, false) AND {eligible}) \
           UNION ALL {} \
           UNION ALL \
           (SELECT q.room_id, (SELECT s.levels FROM synapse_compress.room_settings s \
                               WHERE s.room_id = q.room_id), 2, 0, {rank} \
              FROM synapse_compress.room_queue q \
              WHERE {eligible} AND NOT EXISTS (SELECT FROM synapse_compress.room_settings s \
                  WHERE s.room_id = q.room_id AND (s.excluded OR s.priority <> 0)) \
              ORDER BY {order} LIMIT 8) \
           UNION ALL {} \
         ) AS c(room_id, levels, class, priority, rank) \
         ORDER BY c.class, c.priority DESC, c.rank, c.room_id LIMIT 8",
        settings("> 0", 1),
        settings("< 0", 3),
    )
}

/// The room to work on, with its own levels setting if any (`candidates_sql` says
/// which first); never one another session or worker is compressing. `max_pending`:
/// in a batch, a room with fewer groups pending.
fn pick_room(
    client: &mut SpiClient<'_>,
    current: Option<&str>,
    max_pending: Option<i64>,
) -> Result<Option<(String, Option<String>)>> {
    let sql = candidates_sql(max_pending.is_some());
    // Rooms found taken by another session or worker (a batch there holds up to
    // MAX_BATCH_ROOMS): the next candidates are read without them, until none is left.
    let mut taken: Vec<String> = Vec::new();
    loop {
        let args: [DatumWithOid; 3] = [current.into(), max_pending.into(), taken.clone().into()];
        let plan = plans::kept(client, &sql, &args, false)?;
        let table = client.select(&*plan, None, &args).map_err(spi)?;
        let mut candidates: Vec<(String, Option<String>)> = Vec::new();
        for row in table {
            if let Some(room) = row.get::<String>(1).map_err(spi)? {
                // The current room may come twice (first, and in its own rank).
                if !candidates.iter().any(|(r, _)| *r == room) {
                    candidates.push((room, row.get::<String>(2).map_err(spi)?));
                }
            }
        }
        free_result();
        if candidates.is_empty() {
            return Ok(None);
        }
        for (room, levels) in candidates {
            if take_room(client, &room)? {
                return Ok(Some((room, levels)));
            }
            taken.push(room);
        }
    }
}

/// Lock `room`'s queue row, if it is still eligible (READ COMMITTED checks its newest
/// version) and free, then the room's lock, which compress_room takes too; false if
/// either is held elsewhere.
fn take_room(client: &mut SpiClient<'_>, room: &str) -> Result<bool> {
    let args: [DatumWithOid; 1] = [room.into()];
    let plan = plans::kept(
        client,
        "SELECT q.room_id FROM synapse_compress.room_queue q \
         WHERE q.room_id = $1 AND q.pending_groups > 0 \
           AND (q.next_retry IS NULL OR q.next_retry <= now()) \
         FOR UPDATE OF q SKIP LOCKED",
        &args,
        true,
    )?;
    let unavailable = client.update(&*plan, None, &args).map_err(spi)?.is_empty();
    free_result();
    if unavailable {
        return Ok(false);
    }
    let locked = one::<bool>(
        client,
        "SELECT pg_try_advisory_xact_lock(hashtext('synapse_compress'), hashtext($1))",
        &args,
    )?;
    Ok(locked == Some(true))
}

fn report_activity(text: &str) {
    if let Ok(c) = std::ffi::CString::new(text) {
        // SAFETY: backend thread; PostgreSQL copies the string.
        unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
    }
}

/// What a room's last chunk of this run handed on (`engine::Carried`): its tangled
/// groups, whose scan of the room is too slow for every chunk of a large one (they
/// only change if corruption appears mid-run), its slice sizing, and its caches (the
/// level heads' ancestry and the last slice's nodes, held within
/// `synapse_compress.memory_limit` and counted in the next chunk's budget), so a large
/// room's next chunk need not read the heads' chains again.
struct LastChunk {
    run: i64,
    /// The state tables' schema (`@s.`), as `RunTangled`'s.
    schema: String,
    room: String,
    carried: Carried,
}

/// Let go of what a run kept for its chunks (`LastChunk`, `RunTangled`): at a run's
/// end, at a new run's start, and before `compress_room`, so that nothing of a run
/// cancelled midway stays held beside another's memory budget.
pub fn forget_run_caches() {
    LAST_CHUNK.with(|t| t.borrow_mut().take());
    RUN_TANGLED.with(|t| t.borrow_mut().take());
}

/// The run's tangled groups by room (`SpiStore::tangled_by_room`), found at its first
/// chunk when one scan of the database costs less than a query per room; `by_room`
/// `None`: each room's first chunk asks for its own. Found once per run: Synapse never
/// writes the malformed edges they come from, so they only change by corruption.
struct RunTangled {
    run: i64,
    /// The schema the groups are in (`StateTables::sql("@s.")`): a schema switched
    /// mid-run is scanned again.
    schema: String,
    by_room: Option<FxHashMap<String, Rc<FxHashSet<GroupId>>>>,
}

impl RunTangled {
    fn is_for(&self, run: i64, tables: &StateTables) -> bool {
        self.run == run && self.schema == tables.sql("@s.")
    }
}

/// More tangled groups than this in the database (a badly damaged one): each room
/// asks for its own rather than the run holding them all.
const MAX_RUN_TANGLED: usize = 100_000;

thread_local! {
    static LAST_CHUNK: RefCell<Option<LastChunk>> = const { RefCell::new(None) };
    static RUN_TANGLED: RefCell<Option<RunTangled>> = const { RefCell::new(None) };
}

/// At a run's first chunk (or after a schema switch): every room's tangled groups in
/// one scan, when it pays (`SpiStore::tangled_by_room`), else each room finds its own.
/// Outside the chunk's unit and its timing; a failure (even for resources) only means
/// each room finds its own.
fn find_run_tangled(client: &mut SpiClient<'_>, tables: &StateTables, run: i64) -> Result<()> {
    // The rooms the run may still work on, for the estimate.
    let rooms = one::<Vec<String>>(
        client,
        "SELECT coalesce(array_agg(room_id), '{}') FROM synapse_compress.room_queue \
         WHERE pending_groups > 0",
        &[],
    )?
    .unwrap_or_default();
    let started = Instant::now();
    let found = tables.owner().run(|| {
        guard::optional(|| {
            let mut store = SpiStore::new(client, tables, false).map_err(spi)?;
            store.tangled_by_room(&rooms, MAX_RUN_TANGLED)
        })
    });
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let by_room: Option<FxHashMap<String, Rc<FxHashSet<GroupId>>>> = match found {
        Ok(Some(m)) => {
            pgrx::debug1!(
                "synapse_compress: run {run}: tangled groups found in one scan in {ms:.1} ms: {} in {} rooms",
                m.values().map(|t| t.len()).sum::<usize>(),
                m.len()
            );
            Some(m.into_iter().map(|(r, t)| (r, Rc::new(t))).collect())
        }
        Ok(None) => {
            pgrx::debug1!("synapse_compress: run {run}: each room finds its tangled groups");
            None
        }
        Err(message) => {
            pgrx::log!(
                "synapse_compress: run {run}: one scan for the tangled groups failed, each room \
                 finds its own: {message}"
            );
            None
        }
    };
    let schema = tables.sql("@s.");
    RUN_TANGLED.with(|t| {
        *t.borrow_mut() = Some(RunTangled {
            run,
            schema,
            by_room,
        })
    });
    Ok(())
}

/// What a run's driver does after a step.
pub enum Next {
    /// A chunk ran (or failed and was recorded on its room): go on.
    Chunk(Step),
    /// End the run with `end_run(run, end, message)`.
    End {
        end: RunEnd,
        message: Option<String>,
    },
}

/// Whether `synapse_compress.window` is open at `minute` of the day (closed when either
/// is unknown: better no run than one in busy hours).
pub fn window_open(minute: Option<u32>) -> bool {
    match gucs::window() {
        Some(w) if w.is_always() => true,
        Some(w) => minute.is_some_and(|m| w.contains(m)),
        None => false,
    }
}

/// One step of a run, the same for both drivers: the run policy at this chunk
/// boundary (`Source::run_end_before_chunk`), then the next chunk, and while it left its
/// room done, more small rooms in the same transaction (`policy::next_in_batch`; the
/// run policy is asked again before each). The driver owns the transaction around it,
/// counts the chunks and sleeps `chunk_pause` between steps.
pub fn step(
    client: &mut SpiClient<'_>,
    run: i64,
    budget: Budget,
    elapsed: Duration,
    chunks: u64,
    stop_requested: bool,
) -> Result<Next> {
    let started = Instant::now();
    let row = load_run(client, run)?;
    let mut at = Boundary {
        elapsed,
        chunks,
        stop_requested,
        enabled: gucs::ENABLED.get(),
        paused: row.paused,
        window_open: window_open(row.minute),
    };
    if let Some(end) = row.source.run_end_before_chunk(&budget, &at) {
        let message = (end == RunEnd::Window).then(|| {
            format!(
                "synapse_compress.window {} closed",
                gucs::text(&gucs::WINDOW)
            )
        });
        return Ok(Next::End { end, message });
    }
    let chunk_size = policy::chunk_limit(row.chunk_size);
    let mut done = Step::new(Outcome::NoWork, None);
    let mut tally = RunTally::default();
    let mut current = row.current_room.clone();
    let mut max_pending = None;
    loop {
        let limit = max_pending.map_or(chunk_size, |m: usize| m);
        let chunk = match run_chunk(client, run, &row, current.as_deref(), limit, max_pending)? {
            Taken::Chunk(chunk) => chunk,
            Taken::NoRoom => break,
            Taken::Deferred { room, position } => {
                // The run's current room, which the next step takes first.
                tally.rooms += 1;
                current = Some(room);
                done.position = position;
                break;
            }
        };
        tally.add(&chunk, current.as_deref());
        current = chunk.room_id.clone();
        done = done.then(chunk);
        let batch = policy::Batch {
            rooms: done.chunks.min(u32::MAX as u64) as u32,
            groups: done.groups.max(0) as u64,
        };
        let Some(left) = policy::next_in_batch(done.outcome, done.room_done, batch, chunk_size)
        else {
            break;
        };
        at.elapsed = elapsed + started.elapsed();
        at.chunks = chunks + done.chunks;
        if row.source.run_end_before_chunk(&budget, &at).is_some() {
            break;
        }
        pgrx::check_for_interrupts!();
        max_pending = Some(left);
    }
    if done.chunks == 0 {
        return Ok(Next::End {
            end: RunEnd::Done,
            message: None,
        });
    }
    record_step(client, run, &row, &done, &tally, current.as_deref())?;
    pgrx::debug1!(
        "synapse_compress: run {run}, {} chunk{} ending in room {}: time by phase: {}",
        done.chunks,
        if done.chunks == 1 { "" } else { "s" },
        done.room_id.as_deref().unwrap_or(""),
        done.phases.with_other(started.elapsed())
    );
    Ok(Next::Chunk(done))
}

/// The step's counts on its run's row, and the database's rows saved (one statement),
/// with the chunk size adapted to the time the step's chunks took. `current`: the room
/// the next step goes on with (the last chunk's, or a deferred one).
fn record_step(
    client: &mut SpiClient<'_>,
    run: i64,
    row: &RunRow,
    done: &Step,
    tally: &RunTally,
    current: Option<&str>,
) -> Result<()> {
    let next_size = policy::adapt_chunk_size(
        row.chunk_size,
        done.engine_ms,
        gucs::TARGET_CHUNK_TIME.get().into(),
    );
    exec(
        client,
        "WITH saved AS (UPDATE synapse_compress.control SET rows_saved = rows_saved + $12 \
                        WHERE $12 <> 0) \
         UPDATE synapse_compress.runs SET \
            rooms = rooms + $2, current_room = $3, current_group = $4, \
            chunks = chunks + $5, chunks_not_saved = chunks_not_saved + $6, \
            groups = groups + $7, groups_changed = groups_changed + $8, \
            rows_before = rows_before + $9, rows_after = rows_after + $10, \
            errors = errors + $11, chunk_size = $13 \
         WHERE run_id = $1",
        &[
            run.into(),
            tally.rooms.into(),
            current.into(),
            done.position.into(),
            (done.chunks.min(i32::MAX as u64) as i32).into(),
            tally.not_saved.into(),
            done.groups.into(),
            done.groups_changed.into(),
            done.rows_before.into(),
            done.rows_after.into(),
            tally.errors.into(),
            tally.saved.into(),
            next_size.into(),
        ],
    )
}

/// Compress the next chunk of the run, of at most `chunk_size` groups, after a chunk of
/// `current`; `max_pending`: in a batch, of a room with fewer groups pending. The room's
/// queue row is updated here; the run's row by the step (`record_step`).
fn run_chunk(
    client: &mut SpiClient<'_>,
    run: i64,
    row: &RunRow,
    current: Option<&str>,
    chunk_size: usize,
    max_pending: Option<usize>,
) -> Result<Taken> {
    let default = default_levels()?;
    let max_pending = max_pending.map(|m| m.min(i64::MAX as usize) as i64);
    let Some((room, levels_text)) = pick_room(client, current, max_pending)? else {
        return Ok(Taken::NoRoom);
    };
    let room_setting = room_levels(&room, levels_text);
    let levels = room_setting.clone().unwrap_or(default);
    let mut tables = StateTables::resolve(client, Access::Write)?;
    let owner = tables.owner();
    let (mut progress, corrected) =
        owner.run(|| progress::load(client, &tables, &room, &levels))?;
    // A room given its own levels after it was compressed with others: its next
    // groups start a fresh tree with them (always safe, as after reset_room).
    let levels_changed = room_setting
        .as_ref()
        .is_some_and(|spec| progress.levels.spec() != *spec);
    if levels_changed {
        progress.levels = Levels::new(&levels);
    }
    if row.source == Source::Worker {
        report_activity(&format!(
            "synapse_compress run {run}: room {room}, chunk after state group {}",
            progress.last_compressed
        ));
    }
    let limits = ChunkLimits {
        chunk_size,
        upto: row.upto,
        min_saved_rows: gucs::MIN_SAVED_ROWS.get() as i64,
        memory_limit: gucs::memory_limit(),
    };
    if !RUN_TANGLED.with(|t| t.borrow().as_ref().is_some_and(|t| t.is_for(run, &tables))) {
        find_run_tangled(client, &tables, run)?;
    }
    let started = Instant::now();
    // The room's last chunk of this run hands on everything; another room's, the
    // slice sizing only (a small room then fits in one slice, not FIRST_SLICE and the
    // rest), and its caches are let go first, so they are never held beside this
    // chunk's memory budget.
    let schema = tables.sql("@s.");
    let (carried, same_room) = LAST_CHUNK.with(|t| {
        let mut t = t.borrow_mut();
        match &*t {
            Some(t) if t.run == run && t.schema == schema && t.room == room => {
                (t.carried.clone(), true)
            }
            Some(last) if last.run == run => {
                let sizing = last.carried.sizing_only();
                *t = None;
                (sizing, false)
            }
            _ => {
                *t = None;
                (Carried::default(), false)
            }
        }
    });
    let result = guard::contained(|| {
        owner.run(|| {
            compress_chunk_as_owner(
                client,
                &mut tables,
                &room,
                &progress,
                limits,
                carried.clone(),
                same_room,
                run,
            )
        })
    });
    let mut step = Step::new(Outcome::Failed, Some(room.clone()));
    step.engine_ms = started.elapsed().as_millis() as i64;
    step.position = progress.last_compressed;
    let (mut saved, mut not_saved, mut skipped) = (0, 0, 0);
    match result {
        Ok(r) => {
            step.position = r.progress.last_compressed;
            step.phases = r.phases;
            let mut notes = Vec::new();
            if corrected {
                notes.push("saved levels were invalid and were restarted".to_string());
            }
            if levels_changed {
                notes.push(format!("levels restarted with the room's setting {levels}"));
            }
            if r.levels_reset {
                notes.push(
                    "saved levels did not match the stored tree and were restarted".to_string(),
                );
            }
            step.outcome = Outcome::of_chunk(&r.outcome);
            let room_done = policy::room_done(&r.outcome, limits.chunk_size);
            step.room_done = room_done;
            let written = step.outcome == Outcome::Written;
            match &r.outcome {
                ChunkOutcome::Done => {}
                ChunkOutcome::Written(rep) | ChunkOutcome::NotSaved { report: rep, .. } => {
                    step.groups = rep.groups as i64;
                    step.rows_before = rep.rows_before as i64;
                    skipped = rep.skipped.len() as i64;
                    if written {
                        step.groups_changed = rep.changed as i64;
                        step.rows_after = rep.rows_after as i64;
                        saved = step.rows_before - step.rows_after;
                    } else {
                        step.rows_after = step.rows_before;
                        not_saved = 1;
                    }
                }
            }
            match &r.outcome {
                ChunkOutcome::Done => {}
                ChunkOutcome::Written(rep) => {
                    revisit::record_chunk(client, &room, rep.first, rep.last, &rep.snapshots)?
                }
                ChunkOutcome::NotSaved { report: rep, .. } => revisit::record_chunk(
                    client,
                    &room,
                    rep.first,
                    rep.last,
                    &rep.stored_snapshots,
                )?,
            }
            if let ChunkOutcome::NotSaved { saved, .. } = &r.outcome {
                notes.push(format!("chunk undone: it would have saved {saved} rows"));
            }
            step.message = (!notes.is_empty()).then(|| notes.join("; "));
            exec(
                client,
                "UPDATE synapse_compress.room_queue SET \
                    pending_groups = CASE WHEN $2 THEN 0 ELSE greatest(pending_groups - $3, 1) END, \
                    pending_rows = CASE WHEN $2 THEN 0 ELSE greatest(pending_rows - $4, 0) END, \
                    rows_saved = rows_saved + $5, \
                    chunks_written = chunks_written + $6, \
                    chunks_not_saved = chunks_not_saved + $7, \
                    groups_skipped = groups_skipped + $8, \
                    last_chunk_at = clock_timestamp(), error_count = 0, next_retry = NULL \
                 WHERE room_id = $1",
                &[
                    room.as_str().into(),
                    room_done.into(),
                    step.groups.into(),
                    step.rows_before.into(),
                    saved.into(),
                    i64::from(written).into(),
                    not_saved.into(),
                    skipped.into(),
                ],
            )?;
            // Kept for the room's next chunk only now that the chunk's unit (its
            // writes and progress) and its bookkeeping succeeded: a failed attempt's
            // caches are dropped with it, before any retry.
            let last = LastChunk {
                run,
                schema,
                room: room.clone(),
                carried: r.carried,
            };
            LAST_CHUNK.with(|t| *t.borrow_mut() = Some(last));
        }
        Err(failure) if failure.refused_holding && max_pending.is_some() => {
            pgrx::debug1!(
                "synapse_compress: run {run}: room {room} left to the next step, where it \
                 can wait for its rows: {}",
                failure.message
            );
            return Ok(Taken::Deferred {
                room,
                position: progress.last_compressed,
            });
        }
        Err(failure) => {
            step.outcome = Outcome::Failed;
            let message = format!(
                "{} (SQLSTATE {}, {} attempt{})",
                failure.message,
                failure.sqlstate,
                failure.attempts,
                if failure.attempts == 1 { "" } else { "s" }
            );
            // The queue row is locked by pick_room: its count is this room's.
            let errors_before = one::<i32>(
                client,
                "SELECT error_count FROM synapse_compress.room_queue WHERE room_id = $1",
                &[room.as_str().into()],
            )?
            .unwrap_or(0);
            let delay = policy::retry_delay(errors_before.max(0) as u32);
            exec(
                client,
                "UPDATE synapse_compress.room_queue SET last_error = $2, \
                    last_error_at = clock_timestamp(), error_count = error_count + 1, \
                    next_retry = clock_timestamp() + make_interval(secs => $3) \
                 WHERE room_id = $1",
                &[
                    room.as_str().into(),
                    message.as_str().into(),
                    (delay.as_secs() as f64).into(),
                ],
            )?;
            pgrx::warning!("synapse_compress: room {room} skipped: {message}");
            step.message = Some(message);
        }
    }
    Ok(Taken::Chunk(step))
}

/// The chunk's rewrite and the room's progress, as the state tables' owner. `carried`:
/// what the run's last chunk handed on, all of it if it was this room's (`same_room`);
/// else the room's tangled groups come from the run's scan, if it made one.
#[allow(clippy::too_many_arguments)]
fn compress_chunk_as_owner(
    client: &mut SpiClient<'_>,
    tables: &mut StateTables,
    room: &str,
    progress: &Progress,
    limits: ChunkLimits,
    carried: Carried,
    same_room: bool,
    run: i64,
) -> Result<ChunkResult> {
    let by_room = (!same_room)
        .then(|| {
            RUN_TANGLED.with(|t| match &*t.borrow() {
                Some(found) if found.is_for(run, tables) => found
                    .by_room
                    .as_ref()
                    .map(|m| m.get(room).cloned().unwrap_or_default()),
                _ => None,
            })
        })
        .flatten();
    let carried = match by_room {
        Some(tangled) => carried.with_tangled(tangled),
        None => carried,
    };
    let mut store = SpiStore::new(client, tables, true).map_err(spi)?;
    let r = engine::compress_chunk(&mut store, room, progress, limits, carried)?;
    drop(store);
    progress::save(client, tables, room, &r.progress)?;
    Ok(r)
}

/// A room's state groups, counted as the tables' owner.
pub fn room_state_groups(client: &SpiClient<'_>, room: &str) -> Result<i64> {
    let tables = StateTables::resolve(client, Access::Read)?;
    let sql = tables.sql("SELECT count(*) FROM @s.state_groups WHERE room_id = $1");
    let n = tables
        .owner()
        .run(|| one::<i64>(client, &sql, &[room.into()]))?;
    Ok(n.unwrap_or(0))
}

/// Every room's `last_compressed` and saved levels (`length/size`, finest first).
pub fn room_progress(client: &SpiClient<'_>) -> Result<Vec<(String, i64, Option<String>)>> {
    let tables = StateTables::resolve(client, Access::Read)?;
    if !tables.has_tool_tables() {
        return Ok(Vec::new());
    }
    let sql = tables.sql(
        "SELECT p.room_id, p.last_compressed, \
                (SELECT string_agg(s.current_length || '/' || s.max_size, ',' ORDER BY s.level_num) \
                 FROM @s.state_compressor_state s WHERE s.room_id = p.room_id) \
         FROM @s.state_compressor_progress p",
    );
    tables.owner().run(|| {
        let table = client.select(&sql, None, &[]).map_err(spi)?;
        let mut rows = Vec::new();
        for row in table {
            let room: Option<String> = row.get(1).map_err(spi)?;
            let last: Option<i64> = row.get(2).map_err(spi)?;
            let levels: Option<String> = row.get(3).map_err(spi)?;
            if let (Some(room), Some(last)) = (room, last) {
                rows.push((room, last, levels));
            }
        }
        free_result();
        Ok(rows)
    })
}

/// Forget a room's saved levels, progress and errors; the next run starts it over
/// from its first group with fresh levels. Waits for a chunk of the room in progress.
pub fn reset_room(client: &mut SpiClient<'_>, room: &str) -> Result<()> {
    let tables = StateTables::resolve(client, Access::Write)?;
    exec(
        client,
        "SELECT pg_advisory_xact_lock(hashtext('synapse_compress'), hashtext($1))",
        &[room.into()],
    )?;
    let (groups, rows, had_progress) = tables.owner().run(|| -> Result<_> {
        let groups = one::<i64>(
            client,
            &tables.sql("SELECT count(*) FROM @s.state_groups WHERE room_id = $1"),
            &[room.into()],
        )?;
        let rows = one::<i64>(
            client,
            &tables.sql("SELECT count(*) FROM @s.state_groups_state WHERE room_id = $1"),
            &[room.into()],
        )?;
        let mut had_progress = false;
        if tables.has_tool_tables() {
            had_progress = one::<bool>(
                client,
                &tables.sql(
                    "SELECT EXISTS (SELECT 1 FROM @s.state_compressor_progress WHERE room_id = $1)",
                ),
                &[room.into()],
            )? == Some(true);
            for sql in [
                "DELETE FROM @s.state_compressor_state WHERE room_id = $1",
                "DELETE FROM @s.state_compressor_progress WHERE room_id = $1",
            ] {
                exec(client, &tables.sql(sql), &[room.into()])?;
            }
        }
        Ok((groups.unwrap_or(0), rows.unwrap_or(0), had_progress))
    })?;
    revisit::forget_room(client, room)?;
    let queued = one::<bool>(
        client,
        "SELECT EXISTS (SELECT 1 FROM synapse_compress.room_queue WHERE room_id = $1)",
        &[room.into()],
    )?;
    if groups == 0 && !had_progress && queued != Some(true) {
        return Err(Error::UnknownRoom(room.to_string()));
    }
    exec(
        client,
        "INSERT INTO synapse_compress.room_queue AS q (room_id, pending_groups, pending_rows) \
         VALUES ($1, $2, $3) \
         ON CONFLICT ON CONSTRAINT room_queue_pkey DO UPDATE \
             SET pending_groups = excluded.pending_groups, pending_rows = excluded.pending_rows, \
                 last_error = NULL, last_error_at = NULL, error_count = 0, next_retry = NULL",
        &[room.into(), groups.into(), rows.into()],
    )
}

/// `errors::raise` for a scheduled-run error at the SQL boundary.
pub fn raise(e: Error) -> ! {
    errors::raise(e)
}
