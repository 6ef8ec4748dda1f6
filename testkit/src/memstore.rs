//! An in-memory Synapse state store: the `Store` the property tests compress, and an
//! oracle that resolves state exactly as Synapse's read query does.

use std::collections::{BTreeMap, BTreeSet};

use synapse_compress_core::engine::memory::{LoadAllowance, LOAD_BATCH_ROWS};
use synapse_compress_core::hash::FxHashSet;
use synapse_compress_core::store::{Chain, Chunk, Rewrite, RoomExtent, Store};
use synapse_compress_core::{Error, GroupId, RawGroup, Result, StateRow};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// `state_groups`: id → room.
    pub groups: BTreeMap<GroupId, String>,
    /// `state_group_edges`: group → predecessors (normally at most one).
    pub edges: BTreeMap<GroupId, Vec<GroupId>>,
    /// `state_groups_state`: group → rows.
    pub rows: BTreeMap<GroupId, Vec<StateRow>>,
    pub rooms: BTreeSet<String>,
    pub pending_deletion: BTreeSet<GroupId>,
    pub persisting: BTreeSet<GroupId>,
}

/// What Synapse's read query returns for a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    State(BTreeMap<(String, String), String>),
    /// The recursive query would never end.
    Cyclic,
    /// The winning group holds one key twice with different events.
    Ambiguous,
}

#[derive(Clone, Debug, Default)]
pub struct MemStore {
    pub tables: Tables,
    savepoint: Option<Tables>,
    /// Counts of calls, for tests that check set-based behaviour.
    pub writes: usize,
}

impl MemStore {
    pub fn insert(&mut self, g: RawGroup) {
        if let Some(room) = &g.room_id {
            self.tables.groups.insert(g.id, room.clone());
            self.tables.rooms.insert(room.clone());
        }
        if !g.prevs.is_empty() {
            self.tables.edges.insert(g.id, g.prevs);
        }
        if !g.rows.is_empty() {
            self.tables.rows.insert(g.id, g.rows);
        }
    }

    fn raw(&self, id: GroupId) -> RawGroup {
        RawGroup {
            id,
            room_id: self.tables.groups.get(&id).cloned(),
            prevs: self.tables.edges.get(&id).cloned().unwrap_or_default(),
            rows: self.tables.rows.get(&id).cloned().unwrap_or_default(),
        }
    }

    fn frozen(&self, id: GroupId) -> bool {
        self.tables.pending_deletion.contains(&id) || self.tables.persisting.contains(&id)
    }

    /// Synapse's read: every group reachable over edges; per (type, state_key) the row
    /// of the highest group id.
    pub fn resolve(&self, id: GroupId) -> Resolution {
        // Reachable set, and whether a cycle is reachable (the CTE would not end).
        let mut reach = BTreeSet::new();
        let mut on_path = BTreeSet::new();
        fn visit(
            t: &Tables,
            g: GroupId,
            reach: &mut BTreeSet<GroupId>,
            on_path: &mut BTreeSet<GroupId>,
        ) -> bool {
            if on_path.contains(&g) {
                return false;
            }
            if !reach.insert(g) {
                return true;
            }
            on_path.insert(g);
            let ok = t
                .edges
                .get(&g)
                .into_iter()
                .flatten()
                .all(|&p| visit(t, p, reach, on_path));
            on_path.remove(&g);
            ok
        }
        if !visit(&self.tables, id, &mut reach, &mut on_path) {
            return Resolution::Cyclic;
        }
        let mut best: BTreeMap<(String, String), (GroupId, BTreeSet<String>)> = BTreeMap::new();
        for &g in &reach {
            for r in self.tables.rows.get(&g).into_iter().flatten() {
                let key = (r.event_type().to_owned(), r.state_key().to_owned());
                let e = best.entry(key).or_insert((g, BTreeSet::new()));
                if g > e.0 {
                    *e = (g, BTreeSet::new());
                }
                if g == e.0 {
                    e.1.insert(r.event_id().to_owned());
                }
            }
        }
        let mut out = BTreeMap::new();
        for (k, (_, events)) in best {
            if events.len() > 1 {
                return Resolution::Ambiguous;
            }
            out.insert(k, events.into_iter().next().expect("one event"));
        }
        Resolution::State(out)
    }

    /// Hops from a group to the end of its stored chain (`None` if not a simple chain).
    pub fn depth(&self, id: GroupId) -> Option<u32> {
        let mut d = 0;
        let mut cur = id;
        while let Some(prevs) = self.tables.edges.get(&cur) {
            match prevs.as_slice() {
                [p] if *p < cur => {
                    cur = *p;
                    d += 1;
                }
                _ => return None,
            }
        }
        Some(d)
    }
}

impl Store for MemStore {
    fn room_extent(&mut self, room: &str) -> Result<RoomExtent> {
        let max = self
            .tables
            .groups
            .iter()
            .filter(|(_, r)| r.as_str() == room)
            .map(|(id, _)| *id)
            .max();
        Ok(match max {
            Some(max_id) => RoomExtent::Groups { max_id },
            None if self.tables.rooms.contains(room) => RoomExtent::NoGroups,
            None => RoomExtent::Unknown,
        })
    }

    fn count_groups(&mut self, room: &str, after: GroupId, upto: GroupId) -> Result<u64> {
        Ok(self
            .tables
            .groups
            .range(after + 1..=upto)
            .filter(|(_, r)| r.as_str() == room)
            .count() as u64)
    }

    fn load_chunk(
        &mut self,
        room: &str,
        after: GroupId,
        upto: GroupId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Chunk> {
        let ids: Vec<GroupId> = self
            .tables
            .groups
            .range(after + 1..=upto)
            .filter(|(_, r)| r.as_str() == room)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        let frozen = ids.iter().copied().filter(|&id| self.frozen(id)).collect();
        let groups: Vec<RawGroup> = ids.into_iter().map(|id| self.raw(id)).collect();
        within(&groups, max_bytes)?;
        Ok(Chunk { groups, frozen })
    }

    fn load_chain(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<Chain> {
        let mut groups = Vec::new();
        let mut seen = BTreeSet::new();
        let mut cur = group;
        loop {
            let g = self.raw(cur);
            let next = match g.prevs.as_slice() {
                [p] => Some(*p),
                _ => None,
            };
            groups.push(g);
            seen.insert(cur);
            match next {
                Some(p) if !seen.contains(&p) && groups.len() <= max_hops => cur = p,
                _ => break,
            }
        }
        within(&groups, max_bytes)?;
        let frozen = groups
            .iter()
            .map(|g| g.id)
            .filter(|&id| self.frozen(id))
            .collect();
        Ok(Chain { groups, frozen })
    }

    fn tangled(&mut self, room: &str) -> Result<FxHashSet<GroupId>> {
        let t = &self.tables;
        let in_room = |id: &GroupId| t.groups.get(id).map(String::as_str) == Some(room);
        let mut todo: Vec<GroupId> = Vec::new();
        for (&id, prevs) in &t.edges {
            let malformed = in_room(&id) && (prevs.len() > 1 || prevs.iter().any(|&p| p >= id));
            let foreign = !in_room(&id) && prevs.iter().any(in_room);
            if malformed || foreign {
                todo.extend_from_slice(prevs);
            }
        }
        let mut reached = FxHashSet::default();
        while let Some(id) = todo.pop() {
            if reached.insert(id) {
                todo.extend(t.edges.get(&id).into_iter().flatten().copied());
            }
        }
        Ok(reached)
    }

    fn write_chunk(&mut self, _room: &str, rewrites: &[Rewrite]) -> Result<()> {
        // As the database store: a chosen predecessor deleted, pending deletion or
        // being persisted is refused before anything is written.
        for p in rewrites.iter().filter_map(|r| r.prev) {
            let why = if !self.tables.groups.contains_key(&p) {
                "deleted"
            } else if self.tables.pending_deletion.contains(&p)
                || self.tables.persisting.contains(&p)
            {
                "marked for deletion or being persisted"
            } else {
                continue;
            };
            return Err(Error::Concurrent {
                group: p,
                reason: format!("a chosen predecessor was {why} meanwhile"),
            });
        }
        self.writes += 1;
        for r in rewrites {
            match r.prev {
                Some(p) => self.tables.edges.insert(r.group, vec![p]),
                None => self.tables.edges.remove(&r.group),
            };
            if r.rows.is_empty() {
                self.tables.rows.remove(&r.group);
            } else {
                // Rows are a set in the database; keep them sorted so stores compare.
                let mut rows = r.rows.clone();
                rows.sort();
                self.tables.rows.insert(r.group, rows);
            }
        }
        Ok(())
    }

    fn read_back(&mut self, groups: &[GroupId]) -> Result<Vec<RawGroup>> {
        Ok(groups.iter().map(|&id| self.raw(id)).collect())
    }

    fn begin_atomic(&mut self) -> Result<()> {
        self.savepoint = Some(self.tables.clone());
        Ok(())
    }

    fn end_atomic(&mut self, keep: bool) -> Result<()> {
        let saved = self
            .savepoint
            .take()
            .expect("end_atomic after begin_atomic");
        if !keep {
            self.tables = saved;
        }
        Ok(())
    }
}

/// Which `Store` call an `Observed` store passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    RoomExtent,
    CountGroups,
    LoadChunk,
    LoadChain,
    Tangled,
    WriteChunk,
    ReadBack,
    BeginAtomic,
    EndAtomic,
}

/// A `MemStore` that reports each call to `observe` once it is made, with how many
/// groups it returned (0 for calls that return none): tests count the calls the engine
/// makes, or slow them down.
pub struct Observed<'a, F: FnMut(Call, usize)> {
    pub inner: &'a mut MemStore,
    pub observe: F,
}

impl<F: FnMut(Call, usize)> Observed<'_, F> {
    fn seen<T>(&mut self, call: Call, out: Result<T>, groups: impl Fn(&T) -> usize) -> Result<T> {
        (self.observe)(call, out.as_ref().map_or(0, groups));
        out
    }
}

impl<F: FnMut(Call, usize)> Store for Observed<'_, F> {
    fn room_extent(&mut self, room: &str) -> Result<RoomExtent> {
        let out = self.inner.room_extent(room);
        self.seen(Call::RoomExtent, out, |_| 0)
    }
    fn count_groups(&mut self, room: &str, after: GroupId, upto: GroupId) -> Result<u64> {
        let out = self.inner.count_groups(room, after, upto);
        self.seen(Call::CountGroups, out, |_| 0)
    }
    fn load_chunk(
        &mut self,
        room: &str,
        after: GroupId,
        upto: GroupId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Chunk> {
        let out = self.inner.load_chunk(room, after, upto, limit, max_bytes);
        self.seen(Call::LoadChunk, out, |c| c.groups.len())
    }
    fn load_chain(&mut self, group: GroupId, max_hops: usize, max_bytes: usize) -> Result<Chain> {
        let out = self.inner.load_chain(group, max_hops, max_bytes);
        self.seen(Call::LoadChain, out, |c| c.groups.len())
    }
    fn tangled(&mut self, room: &str) -> Result<FxHashSet<GroupId>> {
        let out = self.inner.tangled(room);
        self.seen(Call::Tangled, out, |_| 0)
    }
    fn write_chunk(&mut self, room: &str, rewrites: &[Rewrite]) -> Result<()> {
        let out = self.inner.write_chunk(room, rewrites);
        self.seen(Call::WriteChunk, out, |_| 0)
    }
    fn read_back(&mut self, groups: &[GroupId]) -> Result<Vec<RawGroup>> {
        let out = self.inner.read_back(groups);
        self.seen(Call::ReadBack, out, |g| g.len())
    }
    fn begin_atomic(&mut self) -> Result<()> {
        let out = self.inner.begin_atomic();
        self.seen(Call::BeginAtomic, out, |_| 0)
    }
    fn end_atomic(&mut self, keep: bool) -> Result<()> {
        let out = self.inner.end_atomic(keep);
        self.seen(Call::EndAtomic, out, |_| 0)
    }
}

/// The store's side of the memory contract: rows counted as read, in batches, against
/// the engine's allowance (as the SPI store does).
fn within(groups: &[RawGroup], max_bytes: usize) -> Result<()> {
    let mut allowance = LoadAllowance::new(max_bytes);
    let mut in_batch = 0;
    for g in groups {
        for r in &g.rows {
            allowance.row(g.id, r)?;
            in_batch += 1;
            if in_batch == LOAD_BATCH_ROWS {
                allowance.end_batch();
                in_batch = 0;
            }
        }
    }
    Ok(())
}
