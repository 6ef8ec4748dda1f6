//! A `Run`: one room, processed chunk by chunk, each chunk in slices the memory budget
//! allows. This is the step `compress_room`, `compress_database` and the worker share.

use std::mem::size_of;
use std::rc::Rc;
use std::time::Instant;

use super::memory::{charge_loaded, map_bytes, rewrite_bytes, vec_bytes, MemoryBudget};
use super::phases::{Phase, Section, Timed};
use super::{ChunkReport, GroupPlan, Options, PlanAction, Summary, MAX_RESOLVE_HOPS};
use crate::error::{Error, Result};
use crate::hash::{FxHashMap, FxHashSet};
use crate::levels::Levels;
use crate::model::{GroupId, RawGroup};
use crate::planner::{self, Broken, Decision, Input, Node, Planned, SkipReason};
use crate::state::{Dictionary, State, ALLOC_OVERHEAD};
use crate::store::{Rewrite, RoomExtent, Store};
use crate::verify::{self, Base, Proposal};

/// Groups in a run's first slice, before it has measured what a group costs (Synapse
/// writes a snapshot every 100 groups, so this usually holds one).
const FIRST_SLICE: usize = 100;
/// A slice is at most this many times the last one (estimates are from the last).
const SLICE_GROWTH: usize = 8;

/// Bytes the caches kept between slices may always hold (see `Run::cache_cap`).
const CACHE_FLOOR: usize = 8 << 20;

/// A group's place in the new tree, kept between chunks without its state.
#[derive(Clone, Copy, Debug)]
struct Placement {
    prev: Option<GroupId>,
    depth: u32,
}

/// What a room's next chunk in the same run takes over from this one, when each chunk
/// is a `Run` of its own (`compress_chunk`): the tangled groups, which take a scan of
/// the room to find; the last slice's size and cost per group, so the next chunk
/// need not start with a small first slice; and the run's caches (`Cache`), so the
/// next chunk need not read the level heads' chains again. The first two decide
/// nothing that is written; the caches are taken over only where they are the
/// committed tree (`Run::take_over`).
#[derive(Clone, Debug, Default)]
pub struct Carried {
    tangled: Option<Rc<FxHashSet<GroupId>>>,
    sizing: Option<(usize, usize)>,
    cache: CacheSlot,
}

/// The caches a chunk leaves (the last slice's nodes and the level heads' ancestry,
/// with the dictionary their states are interned in), and where it left the room:
/// they hold the tree as that chunk wrote it. One slot, shared by the clones of a
/// `Carried`, taken at most once: a chunk retried after a failure starts without.
#[derive(Clone, Default)]
struct CacheSlot(Rc<std::cell::RefCell<Option<Cache>>>);

impl std::fmt::Debug for CacheSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.try_borrow().map(|c| c.is_some()).unwrap_or(true);
        write!(f, "CacheSlot({})", if held { "held" } else { "empty" })
    }
}

struct Cache {
    room: String,
    after: GroupId,
    levels: Levels,
    dict: Dictionary,
    carry: FxHashMap<GroupId, Rc<Node>>,
    carry_bytes: usize,
}

impl Carried {
    /// With the room's tangled groups found by the caller (for every room at once,
    /// say): its `Run` does not ask the store.
    pub fn with_tangled(self, tangled: Rc<FxHashSet<GroupId>>) -> Carried {
        Carried {
            tangled: Some(tangled),
            ..self
        }
    }

    /// What another room's first chunk may take over: the slice sizing (what a group
    /// costs is much the same from room to room, and a slice that does not fit is
    /// retried smaller), not the tangled groups or caches, which are this room's.
    pub fn sizing_only(&self) -> Carried {
        Carried {
            tangled: None,
            sizing: self.sizing,
            cache: CacheSlot::default(),
        }
    }

    /// Whether caches are still there to take over (for tests).
    pub fn has_cache(&self) -> bool {
        self.cache.0.borrow().is_some()
    }
}

/// A run's state before a chunk (see `Run::checkpoint`).
pub struct Checkpoint {
    levels: Levels,
    memo: FxHashMap<GroupId, Placement>,
    after: GroupId,
    remaining: Option<u64>,
    summary: Summary,
    finished: bool,
}

/// Whether a step begins a chunk (an atomic unit of its own) or continues the last
/// step's.
#[derive(Clone, Copy)]
enum StepOf {
    NewChunk,
    SameChunk,
}

/// A compression of one room in progress.
pub struct Run {
    room: String,
    opts: Options,
    levels: Levels,
    memo: FxHashMap<GroupId, Placement>,
    /// The current chunk's groups and their stored depth (hops) before the chunk's
    /// writes (`ChunkReport::max_stored_depth`): a predecessor in an earlier slice of
    /// the chunk is already rewritten when a later slice reads it.
    pre_depth: FxHashMap<GroupId, u32>,
    /// Strings interned so far in this run, and the last slice's nodes (with their
    /// states) plus the level heads' ancestry: most lookups below a slice land there
    /// instead of reloading a chain from the database. Both are caches, charged to the
    /// budget and shed when a slice needs the room or they pass `cache_cap`.
    dict: Dictionary,
    carry: FxHashMap<GroupId, Rc<Node>>,
    carry_bytes: usize,
    budget: MemoryBudget,
    /// Bytes one group of the last slice cost, beyond what the run held before it.
    group_cost: Option<usize>,
    /// Groups of the last slice.
    last_slice: usize,
    /// `Store::tangled`, read at the first chunk (or handed over by the caller).
    tangled: Option<Rc<FxHashSet<GroupId>>>,
    after: GroupId,
    upto: GroupId,
    remaining: Option<u64>,
    total: u64,
    pub(super) summary: Summary,
    pub(super) started: Instant,
    finished: bool,
    /// Fill each `ChunkReport::plan` (see `record_plan`).
    record: bool,
}

impl Run {
    /// Start on a room with fresh levels. Groups created after this call are left alone.
    pub fn start(store: &mut dyn Store, room: &str, opts: Options) -> Result<Run> {
        opts.validate()?;
        let upto = match store.room_extent(room)? {
            RoomExtent::Unknown => return Err(Error::UnknownRoom(room.to_owned())),
            RoomExtent::NoGroups => return Err(Error::NoStateGroups(room.to_owned())),
            RoomExtent::Groups { max_id } => max_id,
        };
        let levels = Levels::new(&opts.levels);
        let after = opts.after_group.unwrap_or(0);
        let mut run = Self::resume(room, opts, levels, after, upto)?;
        let mut total = store.count_groups(room, after, upto)?;
        if let Some(m) = run.opts.max_groups {
            total = total.min(m as u64);
        }
        run.total = total;
        Ok(run)
    }

    /// Continue from saved levels after group `after`, up to group `upto`.
    pub fn resume(
        room: &str,
        opts: Options,
        levels: Levels,
        after: GroupId,
        upto: GroupId,
    ) -> Result<Run> {
        opts.validate()?;
        let summary = Summary {
            room_id: room.to_owned(),
            dry_run: opts.dry_run,
            ..Summary::default()
        };
        Ok(Run {
            room: room.to_owned(),
            remaining: opts.max_groups.map(|m| m as u64),
            budget: MemoryBudget::new(opts.memory_limit),
            opts,
            levels,
            memo: FxHashMap::default(),
            pre_depth: FxHashMap::default(),
            dict: Dictionary::default(),
            carry: FxHashMap::default(),
            carry_bytes: 0,
            group_cost: None,
            last_slice: 0,
            tangled: None,
            after,
            upto,
            total: 0,
            summary,
            started: Instant::now(),
            finished: false,
            record: false,
        })
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }
    pub fn levels(&self) -> &Levels {
        &self.levels
    }
    /// Report every group's plan in each chunk's `ChunkReport::plan` (`plan_room`).
    pub fn record_plan(&mut self) {
        self.record = true;
    }
    /// The last group processed (the next chunk starts after it).
    pub fn position(&self) -> GroupId {
        self.after
    }
    /// Groups this run will process in all (for progress reports; 0 when resumed).
    pub fn total(&self) -> u64 {
        self.total
    }
    /// The run's memory accounting (its `peak` never passes its `limit`).
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// What a caller running a room chunk by chunk in separate `Run`s hands on to the
    /// next one (`take_over`) instead of finding it again. The caches move into it.
    pub fn carried(&mut self) -> Carried {
        let cache = Cache {
            room: self.room.clone(),
            after: self.after,
            levels: self.levels.clone(),
            dict: std::mem::take(&mut self.dict),
            carry: std::mem::take(&mut self.carry),
            carry_bytes: std::mem::take(&mut self.carry_bytes),
        };
        Carried {
            tangled: self.tangled.clone(),
            sizing: self.group_cost.map(|cost| (cost, self.last_slice)),
            cache: CacheSlot(Rc::new(std::cell::RefCell::new(Some(cache)))),
        }
    }

    /// Take over what the room's previous chunk handed on. Its caches hold the tree as
    /// that chunk wrote it, so they are taken only when this run starts where it ended,
    /// in the same room, with the levels it left: that is, its progress was committed
    /// with its writes. (Synapse may since have deleted a cached group, marked it for
    /// deletion, or de-deltaed it: the write refuses a predecessor deleted or marked
    /// meanwhile (`Store::write_chunk`), and a de-deltaed group is only shallower than
    /// cached, so the depth bound still holds.)
    pub fn take_over(&mut self, carried: Carried) {
        if carried.tangled.is_some() {
            self.tangled = carried.tangled;
        }
        if let Some((cost, last)) = carried.sizing {
            self.group_cost = Some(cost);
            self.last_slice = last;
        }
        let cache = carried.cache.0.borrow_mut().take();
        if let Some(c) = cache {
            if c.room == self.room && c.after == self.after && c.levels == self.levels {
                self.dict = c.dict;
                self.carry = c.carry;
                self.carry_bytes = c.carry_bytes;
            }
        }
    }

    /// What a failed chunk must not leave behind: `restore` it to retry the chunk
    /// after the database undid the chunk's writes (serialization failure, deadlock).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            levels: self.levels.clone(),
            memo: self.memo.clone(),
            after: self.after,
            remaining: self.remaining,
            summary: self.summary.clone(),
            finished: self.finished,
        }
    }

    pub fn restore(&mut self, cp: Checkpoint) {
        self.shed();
        self.levels = cp.levels;
        self.memo = cp.memo;
        self.after = cp.after;
        self.remaining = cp.remaining;
        self.summary = cp.summary;
        self.finished = cp.finished;
    }

    /// Process the next chunk; `None` when the room is done. Its time by phase is
    /// added to the summary's.
    pub fn step(&mut self, store: &mut dyn Store) -> Result<Option<ChunkReport>> {
        self.step_as(store, StepOf::NewChunk)
    }

    /// `step`, as more of the chunk the last step began (`compress_chunk`'s stretch,
    /// kept or undone as a whole): the stored depths it reports are those from before
    /// the chunk's first step, which an undo brings back.
    pub(super) fn step_on(&mut self, store: &mut dyn Store) -> Result<Option<ChunkReport>> {
        self.step_as(store, StepOf::SameChunk)
    }

    fn step_as(&mut self, store: &mut dyn Store, step: StepOf) -> Result<Option<ChunkReport>> {
        let mut timed = Timed::new(store);
        let stepped = self.step_timed(&mut timed, step);
        self.summary.phases.merge(&timed.phases);
        stepped
    }

    fn step_timed(&mut self, store: &mut Timed<'_>, step: StepOf) -> Result<Option<ChunkReport>> {
        if self.finished || self.remaining == Some(0) || self.after >= self.upto {
            self.finished = true;
            return Ok(None);
        }
        let want = match self.remaining {
            Some(r) => (r as usize).min(self.opts.chunk_size),
            None => self.opts.chunk_size,
        };
        if self.tangled.is_none() {
            self.tangled = Some(Rc::new(store.tangled(&self.room)?));
        }
        let mut report = ChunkReport::default();
        if let StepOf::NewChunk = step {
            self.pre_depth = FxHashMap::default();
        }
        while (report.groups as usize) < want && self.after < self.upto {
            if report.groups > 0 {
                store.check_interrupts();
            }
            let asked = want - report.groups as usize;
            match self.slice(store, asked)? {
                None => break,
                Some((slice, slice_asked)) => {
                    // Fewer groups than the slice asked for: the room ends here. (A
                    // slice smaller than `asked`, for memory, is not the end.)
                    let got = slice.groups as usize;
                    report.extend(slice);
                    if got < slice_asked {
                        break;
                    }
                }
            }
        }
        if report.groups == 0 {
            self.finished = true;
            return Ok(None);
        }
        let s = &mut self.summary;
        s.chunks += 1;
        s.state_groups += report.groups;
        s.groups_changed += report.changed;
        s.groups_skipped += report.skipped.len() as u64;
        s.rows_before += report.rows_before;
        s.rows_after += report.rows_after;
        s.elapsed_ms = self.started.elapsed().as_millis() as u64;
        Ok(Some(report))
    }

    /// Drop the caches: the nodes carried between slices and the dictionary (which
    /// only they refer to between slices).
    fn shed(&mut self) {
        self.carry = FxHashMap::default();
        self.carry_bytes = 0;
        self.dict = Dictionary::default();
    }

    /// What the caches kept between slices may hold: about one slice's working set
    /// (at least `CACHE_FLOOR`), so a run's memory follows its slices, not the room's
    /// length (the dictionary keeps every string it has seen); never more than half the
    /// budget.
    fn cache_cap(&self) -> usize {
        let slice = self.group_cost.unwrap_or(0).saturating_mul(self.last_slice);
        (self.budget.limit() / 2).min(slice.max(CACHE_FLOOR))
    }

    /// What the run keeps between slices.
    fn held_bytes(&self) -> usize {
        let tangled = self
            .tangled
            .as_ref()
            .map_or(0, |t| map_bytes::<GroupId, ()>(t.capacity()));
        self.dict.heap_bytes()
            + self.carry_bytes
            + map_bytes::<GroupId, Placement>(self.memo.capacity())
            + map_bytes::<GroupId, u32>(self.pre_depth.capacity())
            + tangled
    }

    /// Groups for the next slice of at most `max`: as many as the last slice's cost per
    /// group says fit in what the budget leaves free.
    fn slice_size(&self, max: usize) -> usize {
        let n = match self.group_cost {
            None => FIRST_SLICE,
            Some(cost) => {
                let free = self.budget.limit().saturating_sub(self.held_bytes());
                // Saturating: an unlimited budget leaves usize::MAX free.
                ((free / 4).saturating_mul(3) / cost.max(1))
                    .min(self.last_slice.max(1).saturating_mul(SLICE_GROWTH))
            }
        };
        n.clamp(1, max)
    }

    /// Process the next slice of at most `max` groups, smaller if memory needs it:
    /// a slice that does not fit is retried after shedding the caches, then with half
    /// the groups; one group that does not fit alone fails the run. Returns the report
    /// and how many groups were asked for (`None`: no group left).
    fn slice(&mut self, store: &mut Timed<'_>, max: usize) -> Result<Option<(ChunkReport, usize)>> {
        let mut n = self.slice_size(max);
        loop {
            // Only what `shed` frees counts against the cap (placements and depths stay).
            if self.dict.heap_bytes() + self.carry_bytes > self.cache_cap() {
                self.shed();
            }
            let clean = self.carry.is_empty() && self.dict.is_empty();
            let levels = self.levels.clone();
            match self.process(store, n) {
                Ok(Some(report)) => {
                    self.summary.slices += 1;
                    self.summary.memory_peak = self.budget.peak() as u64;
                    return Ok(Some((report, n)));
                }
                Ok(None) => return Ok(None),
                Err(Error::MemoryLimit {
                    group,
                    needed,
                    limit,
                }) => {
                    // Nothing of the slice was written or kept but the levels it moved.
                    self.levels = levels;
                    self.shed();
                    self.summary.memory_peak = self.budget.peak() as u64;
                    if clean {
                        if n == 1 {
                            return Err(Error::MemoryLimit {
                                group,
                                needed,
                                limit,
                            });
                        }
                        n /= 2;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Load, resolve, plan, verify and write one slice of at most `n` groups. Fails
    /// with `Error::MemoryLimit` before anything is written if the slice does not fit;
    /// then only the levels (restored by the caller) and the caches have changed.
    fn process(&mut self, store: &mut Timed<'_>, n: usize) -> Result<Option<ChunkReport>> {
        self.budget.rebase(self.held_bytes())?;
        let held = self.budget.used();
        let (room, after, upto) = (&self.room, self.after, self.upto);
        let chunk = self
            .budget
            .load(|max| store.load_chunk(room, after, upto, n, max))?;
        if chunk.groups.is_empty() {
            return Ok(None);
        }
        let first = chunk.groups[0].id;
        let named = |e: Error| match e {
            Error::MemoryLimit {
                group: None,
                needed,
                limit,
            } => Error::MemoryLimit {
                group: Some(first),
                needed,
                limit,
            },
            e => e,
        };
        let report = self.plan_and_write(store, chunk).map_err(named)?;
        // What a group cost beyond what the run held before the slice.
        let cost = self.budget.recent_peak().saturating_sub(held);
        self.group_cost = Some(cost.div_ceil(report.groups as usize));
        self.last_slice = report.groups as usize;
        Ok(Some(report))
    }

    fn plan_and_write(
        &mut self,
        store: &mut Timed<'_>,
        chunk: crate::store::Chunk,
    ) -> Result<ChunkReport> {
        let resolving = Section::start(store);
        let raw = charge_loaded(&mut self.budget, &chunk.groups)?;
        let n = chunk.groups.len();
        // Per group: its input, its state in a map, its node in the plan.
        self.budget.charge(
            vec_bytes::<Input>(n)
                + vec_bytes::<u64>(n)
                + map_bytes::<GroupId, Option<Rc<State>>>(2 * n)
                + map_bytes::<GroupId, Rc<Node>>(2 * n)
                + n * (size_of::<Node>() + size_of::<Planned>() + 2 * size_of::<usize>())
                + n * ALLOC_OVERHEAD,
        )?;
        let dict_bytes = self.dict.heap_bytes();
        let mut outside = Outside {
            room: &self.room,
            memo: &self.memo,
            carry: &self.carry,
            cache: FxHashMap::default(),
            links: FxHashMap::default(),
            dict: &mut self.dict,
            budget: &mut self.budget,
            dict_bytes,
        };
        // The level heads first, top level down: each head's stored chain runs through
        // the heads above it, so each lookup reads only the rows above the last one
        // (a chunk's run has them carried only when it took over the caches).
        for head in self.levels.levels().iter().rev().filter_map(|l| l.head) {
            let _ = outside.lookup(store, head)?;
        }

        // Resolve every group's stored state, in id order, from its predecessor's.
        let mut states: FxHashMap<GroupId, Option<Rc<State>>> = FxHashMap::default();
        let mut inputs = Vec::with_capacity(n);
        let mut raw_rows = Vec::with_capacity(n);
        let mut raw_prevs = Vec::with_capacity(if self.record { n } else { 0 });
        let mut stored_snapshot = Vec::with_capacity(n);
        let mut report = ChunkReport {
            first: chunk.groups[0].id,
            last: chunk.groups[n - 1].id,
            groups: n as u64,
            ..ChunkReport::default()
        };
        let tangled = self.tangled.clone().unwrap_or_default();
        // Room for the slice's stored depths (kept until the chunk ends).
        let before = map_bytes::<GroupId, u32>(self.pre_depth.capacity());
        self.pre_depth.reserve(n);
        let after = map_bytes::<GroupId, u32>(self.pre_depth.capacity());
        outside.budget.charge(after.saturating_sub(before))?;
        for (g, bytes) in chunk.groups.into_iter().zip(raw) {
            raw_rows.push(g.rows.len() as u64);
            if self.record {
                raw_prevs.push(g.prevs.first().copied());
            }
            stored_snapshot.push(g.prevs.is_empty());
            report.rows_before += g.rows.len() as u64;
            let input = match resolve_group(store, &mut outside, &states, &g)? {
                Ok((orig_prev, own, state)) => {
                    states.insert(g.id, Some(state.clone()));
                    // Its stored depth: its predecessor's as stored before this chunk
                    // (an earlier group of the chunk, or one below it, as read).
                    let depth = match orig_prev {
                        None => 0,
                        Some(p) => {
                            1 + match self.pre_depth.get(&p) {
                                Some(d) => *d,
                                None => outside.lookup(store, p)?.map_or(0, |n| n.depth),
                            }
                        }
                    };
                    self.pre_depth.insert(g.id, depth);
                    report.max_stored_depth = report.max_stored_depth.max(depth);
                    let skip = if chunk.frozen.contains(&g.id) {
                        Some(SkipReason::Frozen)
                    } else if tangled.contains(&g.id) {
                        Some(SkipReason::Tangled)
                    } else {
                        None
                    };
                    Input {
                        id: g.id,
                        orig_prev,
                        own,
                        state: Some(state),
                        skip,
                    }
                }
                Err(why) => {
                    states.insert(g.id, None);
                    Input {
                        id: g.id,
                        orig_prev: None,
                        own: State::default(),
                        state: None,
                        skip: Some(SkipReason::Broken(why)),
                    }
                }
            };
            inputs.push(input);
            drop(g);
            outside.budget.release(bytes);
        }
        drop(states);
        resolving.end(store, Phase::Resolve);

        let planning = Section::start(store);
        let plan = planner::plan_chunk(
            &inputs,
            &mut self.levels,
            self.opts.recent_choice,
            &mut |id| outside.node(store, id),
        )?;
        planning.end(store, Phase::Plan);

        // Verify every rewrite against the original state before anything is written.
        let verifying = Section::start(store);
        let max_hops = self.levels.spec().max_hops();
        let mut rewrites = Vec::new();
        let mut forced = 0;
        for (i, (((p, input), raw), &was_snapshot)) in plan
            .planned
            .iter()
            .zip(&inputs)
            .zip(&raw_rows)
            .zip(&stored_snapshot)
            .enumerate()
        {
            if was_snapshot {
                report.stored_snapshots.push(p.id);
            }
            if self.record {
                let old_prev = raw_prevs[i];
                let (new_prev, rows_after, action) = match &p.decision {
                    Decision::Skip(why) => (old_prev, *raw, PlanAction::Skipped(why.clone())),
                    Decision::Keep => (old_prev, *raw, PlanAction::Kept),
                    Decision::Rewrite {
                        prev,
                        delta,
                        forced_snapshot,
                    } => (
                        *prev,
                        delta.len() as u64,
                        PlanAction::Rewritten {
                            forced_snapshot: *forced_snapshot,
                        },
                    ),
                };
                report.plan.push(GroupPlan {
                    group: p.id,
                    old_prev,
                    new_prev,
                    rows_before: *raw,
                    rows_after,
                    depth: plan.nodes.get(&p.id).map(|n| n.depth),
                    action,
                });
            }
            match &p.decision {
                Decision::Skip(reason) => {
                    report.skipped.push((p.id, reason.clone()));
                    report.rows_after += raw;
                    if was_snapshot {
                        report.snapshots.push(p.id);
                    }
                }
                Decision::Keep => {
                    report.rows_after += raw;
                    if was_snapshot {
                        report.snapshots.push(p.id);
                    }
                }
                Decision::Rewrite {
                    prev,
                    delta,
                    forced_snapshot,
                } => {
                    if prev.is_none() {
                        report.snapshots.push(p.id);
                    }
                    let target = input.state.as_deref().expect("planned groups have state");
                    let base_node = match prev {
                        Some(b) => Some(match plan.nodes.get(b) {
                            Some(n) => n.clone(),
                            None => outside.node(store, *b)?,
                        }),
                        None => None,
                    };
                    let base = base_node.as_ref().map(|n| Base {
                        state: &n.state,
                        depth: n.depth,
                    });
                    let proposal = Proposal {
                        group: p.id,
                        prev: *prev,
                        delta,
                        target,
                    };
                    // The check rebuilds the state through the base.
                    let check = base.as_ref().map_or(0, |b| {
                        State::default().heap_bytes()
                            + vec_bytes::<(u32, u32)>(b.state.len() + delta.len())
                    });
                    outside.budget.charge(check)?;
                    let depth = verify::check_rewrite(&proposal, base, max_hops)?;
                    outside.budget.release(check);
                    debug_assert_eq!(depth, plan.nodes[&p.id].depth);
                    forced += u64::from(*forced_snapshot);
                    report.changed += 1;
                    report.rows_after += delta.len() as u64;
                    let text: usize = delta
                        .iter()
                        .map(|(k, e)| {
                            let (t, s) = outside.dict.key_text(k);
                            t.len() + s.len() + outside.dict.event_text(e).len()
                        })
                        .sum();
                    outside.budget.charge(rewrite_bytes(delta.len(), text))?;
                    rewrites.push(Rewrite {
                        group: p.id,
                        prev: *prev,
                        rows: delta.rows(outside.dict),
                    });
                }
            }
        }
        outside
            .budget
            .charge(vec_bytes::<Rewrite>(rewrites.capacity()))?;
        drop(outside);
        verifying.end(store, Phase::Verify);

        // Nothing can fail for memory from here: the slice is written.
        if !self.opts.dry_run && !rewrites.is_empty() {
            store.write_chunk(&self.room, &rewrites)?;
            let ids: Vec<GroupId> = rewrites.iter().map(|r| r.group).collect();
            let stored = store.read_back(&ids)?;
            let checking = Section::start(store);
            verify::check_read_back(&rewrites, &stored)?;
            checking.end(store, Phase::Verify);
        }
        drop(rewrites);
        self.summary.forced_snapshots += forced;
        let chunk_max = plan.nodes.values().map(|n| n.depth).max().unwrap_or(0);
        self.summary.max_chain_after = self.summary.max_chain_after.max(chunk_max);
        self.after = report.last;
        if let Some(r) = self.remaining.as_mut() {
            *r -= report.groups;
        }

        // Remember placements this slice made, then forget all but what later slices
        // can reach: the level heads' ancestors and this slice's groups.
        for (id, n) in &plan.nodes {
            self.memo.insert(
                *id,
                Placement {
                    prev: n.prev,
                    depth: n.depth,
                },
            );
        }
        let mut keep: FxHashSet<GroupId> = plan.nodes.keys().copied().collect();
        let mut walked: FxHashSet<GroupId> = FxHashSet::default();
        for head in self.levels.heads() {
            let mut cur = Some(head);
            while let Some(id) = cur.filter(|id| walked.insert(*id)) {
                keep.insert(id);
                cur = self.memo.get(&id).and_then(|p| p.prev);
            }
        }
        // A dry run writes nothing, so the database still holds the old tree: it keeps
        // every placement, since the planner may base a group on any earlier group of
        // its branch.
        if !self.opts.dry_run {
            self.memo.retain(|id, _| keep.contains(id));
        }
        self.carry_over(plan.nodes, &keep);
        Ok(report)
    }

    /// Keep this slice's nodes and the level heads' ancestry for the next slice, as
    /// much of it as a quarter of the budget holds: the heads' ancestry first (the
    /// next slice's level choices), then the rest.
    fn carry_over(&mut self, nodes: FxHashMap<GroupId, Rc<Node>>, keep: &FxHashSet<GroupId>) {
        let share = (self.budget.limit() / 4).min(self.cache_cap());
        let mut carry: FxHashMap<GroupId, Rc<Node>> = FxHashMap::default();
        // States and their shared bases, each counted once.
        let mut seen: FxHashSet<*const ()> = FxHashSet::default();
        let mut bytes = 0;
        let mut add = |carry: &mut FxHashMap<GroupId, Rc<Node>>, id: GroupId, n: &Rc<Node>| {
            let (state, base) = (Rc::as_ptr(&n.state).cast(), n.state.base_id());
            let mut cost = size_of::<Node>() + 2 * size_of::<usize>() + ALLOC_OVERHEAD;
            if !seen.contains(&state) {
                cost += n.state.layer_bytes() + 2 * size_of::<usize>() + ALLOC_OVERHEAD;
            }
            if !seen.contains(&base) {
                cost += n.state.base_bytes();
            }
            let total = bytes + cost + map_bytes::<GroupId, Rc<Node>>(2 * (carry.len() + 1));
            if total > share {
                return false;
            }
            // Seen only once taken: a node refused here may be taken later, and must
            // then pay for its state and base.
            seen.insert(state);
            seen.insert(base);
            bytes += cost;
            carry.insert(id, n.clone());
            true
        };
        for id in keep {
            if let Some(n) = nodes.get(id).or_else(|| self.carry.get(id)) {
                if !add(&mut carry, *id, n) {
                    break;
                }
            }
        }
        for (id, n) in &nodes {
            if !carry.contains_key(id) && !add(&mut carry, *id, n) {
                break;
            }
        }
        self.carry_bytes = bytes + map_bytes::<GroupId, Rc<Node>>(carry.capacity());
        self.carry = carry;
    }
}

/// One group of a slice, resolved from its own rows and its predecessor's state: its
/// stored predecessor, own state and state, or why its state is not well defined.
type Resolved = std::result::Result<(Option<GroupId>, State, Rc<State>), Broken>;

fn resolve_group(
    store: &mut dyn Store,
    outside: &mut Outside,
    states: &FxHashMap<GroupId, Option<Rc<State>>>,
    g: &RawGroup,
) -> Result<Resolved> {
    let own = State::from_rows(outside.dict, &g.rows);
    outside.charge_dict()?;
    let Ok(own) = own else {
        return Ok(Err(Broken::ConflictingRows));
    };
    let prev = match g.prevs.as_slice() {
        [] => None,
        [p] if *p < g.id => Some(*p),
        [p] => return Ok(Err(Broken::PredecessorNotLower(*p))),
        _ => return Ok(Err(Broken::SeveralPredecessors(g.prevs.len()))),
    };
    // `state` shares its predecessor's base (or `own`'s) unless it got its own: only
    // what it adds is charged.
    let (state, beyond) = match prev {
        None => {
            let state = own.clone();
            let beyond = state.layer_bytes();
            (state, beyond)
        }
        Some(p) => {
            let base = match states.get(&p) {
                Some(Some(s)) => s.clone(),
                Some(None) => return Ok(Err(Broken::PredecessorBroken(p))),
                None => match outside.lookup(store, p)? {
                    Ok(node) => node.state.clone(),
                    Err(why) => return Ok(Err(why)),
                },
            };
            let state = base.overlay(&own);
            let beyond = state.bytes_beyond(&base);
            (state, beyond)
        }
    };
    let rc = 2 * size_of::<usize>() + ALLOC_OVERHEAD;
    outside.budget.charge(own.heap_bytes() + beyond + rc)?;
    Ok(Ok((prev, own, Rc::new(state))))
}

/// Groups below the current slice, resolved from the database once per slice. Their
/// place in the new tree comes from the run's memory when it has it (a dry run never
/// wrote it), else from the stored edges.
struct Outside<'a> {
    room: &'a str,
    memo: &'a FxHashMap<GroupId, Placement>,
    carry: &'a FxHashMap<GroupId, Rc<Node>>,
    cache: FxHashMap<GroupId, std::result::Result<Rc<Node>, Broken>>,
    /// Every group of the chains read so far, its rows interned: a lookup of a group on
    /// a chain already read (the level choice walks down one) reads nothing.
    links: FxHashMap<GroupId, Link>,
    dict: &'a mut Dictionary,
    budget: &'a mut MemoryBudget,
    /// What the dictionary held when last charged.
    dict_bytes: usize,
}

impl Outside<'_> {
    /// Charge what the dictionary grew by since last charged.
    fn charge_dict(&mut self) -> Result<()> {
        let now = self.dict.heap_bytes();
        if now > self.dict_bytes {
            self.budget.charge(now - self.dict_bytes)?;
            self.dict_bytes = now;
        }
        Ok(())
    }

    /// The group as a candidate base; one whose state is not well defined is unusable.
    fn node(&mut self, store: &mut dyn Store, id: GroupId) -> Result<Rc<Node>> {
        Ok(self.lookup(store, id)?.unwrap_or_else(|_| {
            Rc::new(Node {
                state: Rc::new(State::default()),
                depth: 0,
                prev: None,
                usable: false,
            })
        }))
    }

    /// The group's node, or why its stored state is not well defined.
    fn lookup(
        &mut self,
        store: &mut dyn Store,
        id: GroupId,
    ) -> Result<std::result::Result<Rc<Node>, Broken>> {
        if let Some(found) = self.cache.get(&id) {
            return Ok(found.clone());
        }
        if let Some(node) = self.carry.get(&id) {
            return Ok(Ok(node.clone()));
        }
        let found = match self.resolve_from_links(id, false) {
            Some(found) => found,
            None => {
                self.read_chain(store, id)?;
                self.resolve_from_links(id, true)
                    .unwrap_or(Err(Broken::NotLoaded(id)))
            }
        };
        let found = found.map(|mut node| {
            if let Some(p) = self.memo.get(&id) {
                node.prev = p.prev;
                node.depth = p.depth;
            }
            Rc::new(node)
        });
        let state = found.as_ref().map_or(0, |n| n.state.heap_bytes());
        self.budget.charge(
            state
                + size_of::<Node>()
                + 4 * size_of::<usize>()
                + 2 * ALLOC_OVERHEAD
                + 2 * size_of::<(GroupId, std::result::Result<Rc<Node>, Broken>)>(),
        )?;
        self.cache.insert(id, found.clone());
        Ok(found)
    }

    fn known(&self, g: GroupId) -> bool {
        known(self.memo, &self.cache, g)
    }

    /// Read `id`'s stored chain down to the first known group, into `links`: most
    /// chains of a slice share all but their top groups.
    fn read_chain(&mut self, store: &mut dyn Store, id: GroupId) -> Result<()> {
        let (cache, memo) = (&self.cache, self.memo);
        let known = |g: GroupId| known(memo, cache, g);
        let chain = self
            .budget
            .load(|max| store.load_chain_above(id, MAX_RESOLVE_HOPS, max, &known))?;
        let raw: usize = charge_loaded(self.budget, &chain.groups)?.iter().sum();
        let mut bytes = 0;
        for g in &chain.groups {
            if self.links.contains_key(&g.id) {
                continue;
            }
            let own = State::from_rows(self.dict, &g.rows).ok();
            bytes += own.as_ref().map_or(0, State::heap_bytes)
                + vec_bytes::<GroupId>(g.prevs.len())
                + 2 * size_of::<(GroupId, Link)>()
                + ALLOC_OVERHEAD;
            self.links.insert(
                g.id,
                Link {
                    prevs: g.prevs.clone(),
                    own,
                    in_room: g.room_id.as_deref() == Some(self.room),
                    frozen: chain.frozen.contains(&g.id),
                },
            );
        }
        drop(chain);
        self.budget.release(raw);
        self.budget.charge(bytes)?;
        self.charge_dict()
    }

    /// `id`'s node from the chains read so far: `None` if they do not hold its chain
    /// down to its end or a known group (then it must be read), unless `last` (it was
    /// just read: what is missing is missing from the database too).
    fn resolve_from_links(
        &self,
        id: GroupId,
        last: bool,
    ) -> Option<std::result::Result<Node, Broken>> {
        // As `Store::load_chain_above` walks it.
        let mut walked = Vec::new();
        let mut seen = FxHashSet::default();
        let mut cur = Some(id);
        let mut below = None;
        while let Some(g) = cur {
            if !seen.insert(g) {
                break;
            }
            if !walked.is_empty() && self.known(g) {
                below = match self.cache.get(&g) {
                    Some(Ok(node)) => Some((g, node.clone())),
                    _ => None,
                };
                break;
            }
            let Some(link) = self.links.get(&g) else {
                if !last {
                    return None;
                }
                break;
            };
            cur = match link.prevs.as_slice() {
                [p] if walked.len() < MAX_RESOLVE_HOPS => Some(*p),
                _ => None,
            };
            walked.push(g);
        }
        Some(fold_links(&self.links, &walked, id, below))
    }
}

/// Whether a chain read may end above `g`: resolved here from its own stored chain (not
/// placed by this run, whose depth may differ from the stored one).
fn known(
    memo: &FxHashMap<GroupId, Placement>,
    cache: &FxHashMap<GroupId, std::result::Result<Rc<Node>, Broken>>,
    g: GroupId,
) -> bool {
    !memo.contains_key(&g) && matches!(cache.get(&g), Some(Ok(_)))
}

/// One group of a stored chain as read, its rows interned.
struct Link {
    prevs: Vec<GroupId>,
    /// `None`: the group holds one key twice with different events.
    own: Option<State>,
    /// Its `state_groups` row is in the room being compressed.
    in_room: bool,
    frozen: bool,
}

/// Resolve a stored chain (`walked`: its groups, nearest first, all in `links`) as
/// Synapse reads it: per key, the row of the highest group. Only chains where that
/// equals "nearest group wins" are accepted (single edges, strictly decreasing ids);
/// anything else is reported, not guessed.
///
/// `below`: the group the chain was read down to (`Store::load_chain_above`), already
/// resolved from its own stored chain; the chain's last group must have it as its one
/// predecessor, and the result is as if the whole chain had been read.
fn fold_links(
    links: &FxHashMap<GroupId, Link>,
    walked: &[GroupId],
    id: GroupId,
    below: Option<(GroupId, Rc<Node>)>,
) -> std::result::Result<Node, Broken> {
    if walked.first() != Some(&id) {
        return Err(Broken::NotLoaded(id));
    }
    let below_id = below.as_ref().map(|(b, _)| *b);
    for (i, &g) in walked.iter().enumerate() {
        let prevs = links[&g].prevs.as_slice();
        let last = i + 1 == walked.len();
        match prevs {
            [] if last && below.is_none() => {}
            [p] if last && Some(*p) == below_id && *p < g => {}
            [] => return Err(Broken::InconsistentChain),
            [p] if *p >= g => return Err(Broken::ChainPredecessorNotLower { group: g, prev: *p }),
            [p] if walked.get(i + 1) == Some(p) => {}
            [_] => return Err(Broken::CyclicOrTooLong(id)),
            _ => {
                return Err(Broken::ChainSeveralPredecessors {
                    group: g,
                    count: prevs.len(),
                })
            }
        }
    }
    // Hops on the whole chain, as a full read would have found them (and refused them
    // beyond `MAX_RESOLVE_HOPS`).
    let hops = (walked.len() - 1) + below.as_ref().map_or(0, |(_, n)| 1 + n.depth as usize);
    if hops > MAX_RESOLVE_HOPS {
        return Err(Broken::CyclicOrTooLong(id));
    }
    // The chain's own rows folded into one delta first, then laid on `below` once:
    // one layer on its base, not one per hop.
    let mut delta = State::default();
    for g in walked.iter().rev() {
        let own = links[g]
            .own
            .as_ref()
            .ok_or(Broken::ChainConflictingRows(*g))?;
        delta = delta.overlay_view(own);
    }
    let state = match below {
        Some((_, n)) => n.state.overlay(&delta),
        None => delta.flattened(),
    };
    let head = &links[&id];
    Ok(Node {
        state: Rc::new(state),
        depth: hops as u32,
        prev: head.prevs.first().copied(),
        usable: !head.frozen && head.in_room,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::DEFAULT_MEMORY_LIMIT;
    use crate::levels::LevelSpec;

    fn run(room: &str, after: GroupId, levels: &Levels) -> Run {
        let opts = Options {
            levels: levels.spec(),
            chunk_size: 10,
            dry_run: false,
            after_group: None,
            max_groups: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            recent_choice: true,
        };
        Run::resume(room, opts, levels.clone(), after, 100).unwrap()
    }

    /// A chunk's caches hold the tree as it wrote it: the next run takes them only
    /// where it starts from that chunk's committed progress (same room, position and
    /// levels); else its writes were undone, or another room is next.
    #[test]
    fn caches_are_taken_over_only_from_where_they_were_left() {
        let spec = LevelSpec::parse("3,2").unwrap();
        let mut left = Levels::new(&spec);
        for g in 1..=10 {
            left.place(g);
        }
        let node = Rc::new(Node {
            state: Rc::new(State::default()),
            depth: 1,
            prev: Some(9),
            usable: true,
        });
        let carried = |levels: &Levels| {
            let mut r = run("!r:hs", 10, levels);
            r.carry.insert(10, node.clone());
            r.carry_bytes = 64;
            r.carried()
        };
        let fresh = Levels::new(&spec);
        for (room, after, levels, taken) in [
            ("!r:hs", 10, &left, true),
            ("!other:hs", 10, &left, false),
            ("!r:hs", 5, &left, false),
            ("!r:hs", 10, &fresh, false),
        ] {
            let mut next = run(room, after, levels);
            let c = carried(&left);
            next.take_over(c.clone());
            assert_eq!(
                next.carry.contains_key(&10),
                taken,
                "{room} after {after}, levels {levels:?}"
            );
            assert_eq!(next.carry_bytes, if taken { 64 } else { 0 });
            assert!(!c.has_cache(), "the slot is emptied either way");
        }
    }
}
