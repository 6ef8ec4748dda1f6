//! The one rewrite path: load a chunk → resolve → plan → verify → write → read back.
//!
//! `compress_room`, the foreground whole-database run and the background worker all
//! drive a `Run` one chunk at a time. Memory is bounded by the chunk: strings are
//! interned per chunk, and between chunks only ids of the level heads and their
//! ancestors (at most the sum of the level sizes) plus the last chunk are kept.

use std::rc::Rc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::hash::{FxHashMap, FxHashSet};
use crate::levels::{LevelSpec, Levels};
use crate::model::GroupId;
use crate::planner::{self, Decision, Input, Node, SkipReason};
use crate::state::{Dictionary, State};
use crate::store::{Chain, Rewrite, RoomExtent, Store};
use crate::verify::{self, Base, Proposal};

/// Guard against corrupt chains when resolving a group from the database. Synapse
/// writes chains under 100 hops and compression keeps them within the level sums.
pub const MAX_RESOLVE_HOPS: usize = 20_000;
/// Largest chunk accepted (groups per chunk).
pub const MAX_CHUNK_SIZE: usize = 100_000;
/// Distinct strings a run keeps interned before it starts a new dictionary (and drops
/// the nodes carried between chunks): about 100 MB at most.
const DICTIONARY_LIMIT: usize = 1_000_000;
/// State entries (8 bytes each) of the last chunk's nodes carried to the next chunk.
const CARRY_LIMIT: usize = 8_000_000;

#[derive(Clone, Debug)]
pub struct Options {
    pub levels: LevelSpec,
    /// Groups per chunk: bounds memory and, in the worker, transaction length.
    pub chunk_size: usize,
    pub dry_run: bool,
    /// Only groups with a higher id (a fresh level state starts there).
    pub after_group: Option<GroupId>,
    /// At most this many groups.
    pub max_groups: Option<i64>,
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(Error::InvalidArgument { name, reason });
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return bad(
                "chunk_size",
                format!("must be between 1 and {MAX_CHUNK_SIZE}"),
            );
        }
        if let Some(a) = self.after_group {
            if a < 0 {
                return bad("after_group", format!("{a} is negative"));
            }
        }
        if let Some(m) = self.max_groups {
            if m < 1 {
                return bad("max_groups", format!("{m} is not positive"));
            }
        }
        Ok(())
    }
}

/// Why a run wrote nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotWritten {
    DryRun,
    NothingToChange,
    /// The rewrite would not remove rows (`saved` may be negative).
    WouldNotSave {
        saved: i64,
    },
    BelowMinimum {
        saved: i64,
        minimum: i64,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub room_id: String,
    pub state_groups: u64,
    pub groups_changed: u64,
    pub groups_skipped: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub forced_snapshots: u64,
    /// Longest predecessor chain (hops) of a processed group after the run.
    pub max_chain_after: u32,
    pub dry_run: bool,
    pub written: bool,
    pub not_written: Option<NotWritten>,
    pub chunks: u64,
    pub elapsed_ms: u64,
    /// Where a written run left the room, to continue from (saved like the worker's).
    pub end: Option<crate::incremental::Progress>,
}

impl Summary {
    pub fn rows_saved(&self) -> i64 {
        self.rows_before as i64 - self.rows_after as i64
    }
}

/// What one chunk did.
#[derive(Clone, Debug, Default)]
pub struct ChunkReport {
    pub first: GroupId,
    pub last: GroupId,
    pub groups: u64,
    pub changed: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub skipped: Vec<(GroupId, SkipReason)>,
}

/// A group's place in the new tree, kept between chunks without its state.
#[derive(Clone, Copy, Debug)]
struct Placement {
    prev: Option<GroupId>,
    depth: u32,
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

/// A compression of one room in progress.
pub struct Run {
    room: String,
    opts: Options,
    levels: Levels,
    memo: FxHashMap<GroupId, Placement>,
    /// Strings interned so far in this run, and the last chunk's nodes (with their
    /// states) plus the level heads' ancestry: most lookups below a chunk land there
    /// instead of reloading a chain from the database. Both are dropped when the
    /// dictionary outgrows `DICTIONARY_LIMIT`, so memory stays bounded by the chunk.
    dict: Dictionary,
    carry: FxHashMap<GroupId, Rc<Node>>,
    /// `Store::tangled`, read at the first chunk (or handed over by the caller).
    tangled: Option<Rc<FxHashSet<GroupId>>>,
    after: GroupId,
    upto: GroupId,
    remaining: Option<u64>,
    total: u64,
    summary: Summary,
    started: Instant,
    finished: bool,
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
            opts,
            levels,
            memo: FxHashMap::default(),
            dict: Dictionary::default(),
            carry: FxHashMap::default(),
            tangled: None,
            after,
            upto,
            total: 0,
            summary,
            started: Instant::now(),
            finished: false,
        })
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }
    pub fn levels(&self) -> &Levels {
        &self.levels
    }
    /// The last group processed (the next chunk starts after it).
    pub fn position(&self) -> GroupId {
        self.after
    }
    /// Groups this run will process in all (for progress reports; 0 when resumed).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The groups this run leaves alone because a malformed group reaches them
    /// (`Store::tangled`), once known; a caller running a room chunk by chunk in
    /// separate `Run`s hands it on with `set_tangled` instead of reading it again.
    pub fn tangled(&self) -> Option<Rc<FxHashSet<GroupId>>> {
        self.tangled.clone()
    }
    pub fn set_tangled(&mut self, tangled: Rc<FxHashSet<GroupId>>) {
        self.tangled = Some(tangled);
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
        self.carry.clear();
        self.levels = cp.levels;
        self.memo = cp.memo;
        self.after = cp.after;
        self.remaining = cp.remaining;
        self.summary = cp.summary;
        self.finished = cp.finished;
    }

    /// Process the next chunk; `None` when the room is done.
    pub fn step(&mut self, store: &mut dyn Store) -> Result<Option<ChunkReport>> {
        if self.finished || self.remaining == Some(0) || self.after >= self.upto {
            self.finished = true;
            return Ok(None);
        }
        let limit = match self.remaining {
            Some(r) => (r as usize).min(self.opts.chunk_size),
            None => self.opts.chunk_size,
        };
        let chunk = store.load_chunk(&self.room, self.after, self.upto, limit)?;
        if chunk.groups.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        if self.tangled.is_none() {
            self.tangled = Some(Rc::new(store.tangled(&self.room)?));
        }
        let report = self.process(store, chunk)?;
        self.after = report.last;
        if let Some(r) = self.remaining.as_mut() {
            *r -= report.groups;
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

    fn process(
        &mut self,
        store: &mut dyn Store,
        chunk: crate::store::Chunk,
    ) -> Result<ChunkReport> {
        if self.dict.len() > DICTIONARY_LIMIT {
            self.dict = Dictionary::default();
            self.carry.clear();
        }
        let dict = &mut self.dict;
        let mut outside = Outside {
            room: &self.room,
            memo: &self.memo,
            carry: &self.carry,
            cache: FxHashMap::default(),
        };

        // Resolve every group's stored state, in id order, from its predecessor's.
        let mut states: FxHashMap<GroupId, Option<Rc<State>>> = FxHashMap::default();
        let mut inputs = Vec::with_capacity(chunk.groups.len());
        let mut report = ChunkReport {
            first: chunk.groups[0].id,
            last: chunk.groups[chunk.groups.len() - 1].id,
            groups: chunk.groups.len() as u64,
            ..ChunkReport::default()
        };
        let tangled = self.tangled.clone().unwrap_or_default();
        let mut raw_rows: FxHashMap<GroupId, u64> = FxHashMap::default();
        for g in &chunk.groups {
            raw_rows.insert(g.id, g.rows.len() as u64);
            report.rows_before += g.rows.len() as u64;
            let resolved: std::result::Result<(Option<GroupId>, State, Rc<State>), String> =
                (|| {
                    let own = State::from_rows(dict, &g.rows)
                        .map_err(|_| "rows name one key with different events".to_string())?;
                    let prev = match g.prevs.as_slice() {
                        [] => None,
                        [p] if *p < g.id => Some(*p),
                        [p] => return Err(format!("predecessor {p} is not lower")),
                        _ => return Err(format!("{} predecessors", g.prevs.len())),
                    };
                    let state = match prev {
                        None => Rc::new(own.clone()),
                        Some(p) => {
                            let base = match states.get(&p) {
                                Some(Some(s)) => s.clone(),
                                Some(None) => return Err(format!("predecessor {p} is broken")),
                                None => outside.resolve(store, dict, p)?.state.clone(),
                            };
                            Rc::new(base.overlay(&own))
                        }
                    };
                    Ok((prev, own, state))
                })();
            let input = match resolved {
                Ok((orig_prev, own, state)) => {
                    states.insert(g.id, Some(state.clone()));
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
                    let skip = Some(SkipReason::Broken(why));
                    Input {
                        id: g.id,
                        orig_prev: None,
                        own: State::default(),
                        state: None,
                        skip,
                    }
                }
            };
            inputs.push(input);
        }
        drop(states);

        let plan = planner::plan_chunk(&inputs, &mut self.levels, &mut |id| {
            outside.node(store, dict, id)
        })?;

        // Verify every rewrite against the original state before anything is written.
        let max_hops = self.levels.spec().max_hops();
        let mut rewrites = Vec::new();
        let mut forced = 0;
        for (p, input) in plan.planned.iter().zip(&inputs) {
            match &p.decision {
                Decision::Skip(reason) => {
                    report.skipped.push((p.id, reason.clone()));
                    report.rows_after += raw_rows[&p.id];
                }
                Decision::Keep => report.rows_after += raw_rows[&p.id],
                Decision::Rewrite {
                    prev,
                    delta,
                    forced_snapshot,
                } => {
                    let target = input.state.as_deref().expect("planned groups have state");
                    let base_node = match prev {
                        Some(b) => Some(match plan.nodes.get(b) {
                            Some(n) => n.clone(),
                            None => outside.node(store, dict, *b)?,
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
                    let depth = verify::check_rewrite(&proposal, base, max_hops)?;
                    debug_assert_eq!(depth, plan.nodes[&p.id].depth);
                    forced += u64::from(*forced_snapshot);
                    report.changed += 1;
                    report.rows_after += delta.len() as u64;
                    rewrites.push(Rewrite {
                        group: p.id,
                        prev: *prev,
                        rows: delta.rows(dict),
                    });
                }
            }
        }
        self.summary.forced_snapshots += forced;
        let chunk_max = plan.nodes.values().map(|n| n.depth).max().unwrap_or(0);
        self.summary.max_chain_after = self.summary.max_chain_after.max(chunk_max);
        drop(outside);

        if !self.opts.dry_run && !rewrites.is_empty() {
            store.write_chunk(&self.room, &rewrites)?;
            let ids: Vec<GroupId> = rewrites.iter().map(|r| r.group).collect();
            let stored = store.read_back(&ids)?;
            verify::check_read_back(&rewrites, &stored)?;
        }

        // Remember placements this chunk made, then forget all but what later chunks
        // can reach: the level heads' ancestors and this chunk's groups.
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
        let entries: usize = plan.nodes.values().map(|n| n.state.len()).sum();
        let mut carry: FxHashMap<GroupId, Rc<Node>> = if entries <= CARRY_LIMIT {
            plan.nodes.clone()
        } else {
            FxHashMap::default()
        };
        for id in &keep {
            if let Some(n) = plan.nodes.get(id).or_else(|| self.carry.get(id)) {
                carry.insert(*id, n.clone());
            }
        }
        self.carry = carry;
        Ok(report)
    }
}

/// Groups below the current chunk, resolved from the database once per chunk. Their
/// place in the new tree comes from the run's memory when it has it (a dry run never
/// wrote it), else from the stored edges.
struct Outside<'a> {
    room: &'a str,
    memo: &'a FxHashMap<GroupId, Placement>,
    carry: &'a FxHashMap<GroupId, Rc<Node>>,
    cache: FxHashMap<GroupId, std::result::Result<Rc<Node>, String>>,
}

impl Outside<'_> {
    /// The group's stored state, or why it is not well defined.
    fn resolve(
        &mut self,
        store: &mut dyn Store,
        dict: &mut Dictionary,
        id: GroupId,
    ) -> std::result::Result<Rc<Node>, String> {
        match self.lookup(store, dict, id) {
            Ok(found) => found,
            Err(e) => Err(e.to_string()),
        }
    }

    /// The group as a candidate base; one whose state is not well defined is unusable.
    fn node(
        &mut self,
        store: &mut dyn Store,
        dict: &mut Dictionary,
        id: GroupId,
    ) -> Result<Rc<Node>> {
        Ok(self.lookup(store, dict, id)?.unwrap_or_else(|_| {
            Rc::new(Node {
                state: Rc::new(State::default()),
                depth: 0,
                prev: None,
                usable: false,
            })
        }))
    }

    fn lookup(
        &mut self,
        store: &mut dyn Store,
        dict: &mut Dictionary,
        id: GroupId,
    ) -> Result<std::result::Result<Rc<Node>, String>> {
        if let Some(found) = self.cache.get(&id) {
            return Ok(found.clone());
        }
        if let Some(node) = self.carry.get(&id) {
            return Ok(Ok(node.clone()));
        }
        let chain = store.load_chain(id, MAX_RESOLVE_HOPS)?;
        let found = fold_chain(dict, &chain, id).map(|(state, depth, prev)| {
            let head = &chain.groups[0];
            let usable = head.room_id.as_deref() == Some(self.room) && !chain.head_frozen;
            let mut node = Node {
                state: Rc::new(state),
                depth,
                prev,
                usable,
            };
            if let Some(p) = self.memo.get(&id) {
                node.prev = p.prev;
                node.depth = p.depth;
            }
            Rc::new(node)
        });
        self.cache.insert(id, found.clone());
        Ok(found)
    }
}

/// Resolve a stored chain as Synapse reads it: per key, the row of the highest group.
/// Only chains where that equals "nearest group wins" are accepted (single edges,
/// strictly decreasing ids); anything else is reported, not guessed.
fn fold_chain(
    dict: &mut Dictionary,
    chain: &Chain,
    id: GroupId,
) -> std::result::Result<(State, u32, Option<GroupId>), String> {
    let gs = &chain.groups;
    if gs.first().map(|g| g.id) != Some(id) {
        return Err(format!("group {id} was not loaded"));
    }
    for (i, g) in gs.iter().enumerate() {
        match g.prevs.as_slice() {
            [] if i + 1 == gs.len() => {}
            [] => return Err("inconsistent chain".into()),
            [p] if *p >= g.id => {
                return Err(format!("group {} has predecessor {p}, not lower", g.id))
            }
            [p] if gs.get(i + 1).map(|n| n.id) == Some(*p) => {}
            [_] => {
                return Err(format!(
                    "chain of {id} is cyclic or longer than {MAX_RESOLVE_HOPS} hops"
                ))
            }
            _ => return Err(format!("group {} has {} predecessors", g.id, g.prevs.len())),
        }
    }
    let mut state = State::default();
    for g in gs.iter().rev() {
        let own = State::from_rows(dict, &g.rows)
            .map_err(|_| format!("group {} has conflicting duplicate rows", g.id))?;
        state = state.overlay(&own);
    }
    Ok((state, (gs.len() - 1) as u32, gs[0].prevs.first().copied()))
}

/// Compress a room (or part of it) in one atomic unit: every chunk is planned,
/// verified and written; at the end the writes are kept only if they remove rows
/// (at least `min_saved_rows`), else undone. `on_chunk` sees each chunk (progress).
pub fn compress_room(
    store: &mut dyn Store,
    room: &str,
    opts: Options,
    min_saved_rows: i64,
    on_chunk: &mut dyn FnMut(&Run, &ChunkReport),
) -> Result<Summary> {
    if min_saved_rows < 0 {
        return Err(Error::InvalidArgument {
            name: "min_saved_rows",
            reason: format!("{min_saved_rows} is negative"),
        });
    }
    let dry_run = opts.dry_run;
    let mut run = Run::start(store, room, opts)?;
    if !dry_run {
        store.begin_atomic()?;
    }
    loop {
        store.check_interrupts();
        match run.step(store) {
            Ok(Some(report)) => on_chunk(&run, &report),
            Ok(None) => break,
            Err(e) => {
                if !dry_run {
                    let _ = store.end_atomic(false);
                }
                return Err(e);
            }
        }
    }
    let mut summary = run.summary.clone();
    let saved = summary.rows_saved();
    summary.not_written = if dry_run {
        Some(NotWritten::DryRun)
    } else if summary.groups_changed == 0 {
        Some(NotWritten::NothingToChange)
    } else if saved <= 0 {
        Some(NotWritten::WouldNotSave { saved })
    } else if saved < min_saved_rows {
        Some(NotWritten::BelowMinimum {
            saved,
            minimum: min_saved_rows,
        })
    } else {
        None
    };
    summary.written = summary.not_written.is_none();
    if summary.written {
        summary.end = Some(crate::incremental::Progress {
            last_compressed: run.position(),
            levels: run.levels().clone(),
        });
    }
    if !dry_run {
        store.end_atomic(summary.written)?;
    }
    summary.elapsed_ms = run.started.elapsed().as_millis() as u64;
    Ok(summary)
}
