//! Interned state: `(type, state_key)` pairs and event ids become small integers, and a
//! group's state is a set of `(key, event)` pairs, sorted by key.
//!
//! States are structurally shared: the states along a chain share one sorted base and
//! each holds a small layer of what changed since it (see `State`). An entry costs 8
//! bytes; the planner's operations (overlay, key-subset test, delta) are linear merges,
//! over the two layers alone when both states stand on one base.

use std::cell::Cell;
use std::mem::size_of;
use std::rc::Rc;

use crate::hash::FxHashMap;
use crate::model::StateRow;

/// An interned `(type, state_key)` pair.
pub type KeyId = u32;
/// An interned event id.
pub type EventId = u32;

/// Strings seen by a run, interned. The engine starts a new one when its memory budget
/// needs the room (see `engine::memory`), so memory depends on the chunk, not on the room.
/// Each string is stored once, shared by the lookup map and the id-indexed list.
#[derive(Default)]
pub struct Dictionary {
    strings: FxHashMap<Rc<str>, u32>,
    texts: Vec<Rc<str>>,
    keys: FxHashMap<(u32, u32), KeyId>,
    key_parts: Vec<(u32, u32)>,
    /// Heap bytes of the interned strings themselves (see `heap_bytes`).
    text_bytes: usize,
}

/// Bytes a heap allocation costs beyond what it asks for (allocator header and
/// rounding), counted once per allocation by every estimate of the engine.
pub const ALLOC_OVERHEAD: usize = 16;

/// Heap bytes of a hash map with this capacity (entries plus one control byte each;
/// the table keeps 1/8 spare, which `capacity` already excludes, so add it back).
pub fn map_bytes<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (capacity * 8).div_ceil(7) * (size_of::<(K, V)>() + 1) + ALLOC_OVERHEAD
}

/// Heap bytes of a vector with this capacity.
pub fn vec_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    capacity * size_of::<T>() + ALLOC_OVERHEAD
}

impl Dictionary {
    fn intern_str(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = u32::try_from(self.texts.len()).expect("fewer than 2^32 strings in a chunk");
        let shared: Rc<str> = s.into();
        // An `Rc<str>` allocation: two counters, then the bytes.
        self.text_bytes += 2 * size_of::<usize>() + s.len() + ALLOC_OVERHEAD;
        self.texts.push(shared.clone());
        self.strings.insert(shared, id);
        id
    }

    /// Estimated heap bytes held (from capacities, so growth is counted when it
    /// happens, not when it is used).
    pub fn heap_bytes(&self) -> usize {
        self.text_bytes
            + map_bytes::<Rc<str>, u32>(self.strings.capacity())
            + vec_bytes::<Rc<str>>(self.texts.capacity())
            + map_bytes::<(u32, u32), KeyId>(self.keys.capacity())
            + vec_bytes::<(u32, u32)>(self.key_parts.capacity())
    }

    pub fn key(&mut self, event_type: &str, state_key: &str) -> KeyId {
        let parts = (self.intern_str(event_type), self.intern_str(state_key));
        if let Some(&k) = self.keys.get(&parts) {
            return k;
        }
        let k = u32::try_from(self.key_parts.len()).expect("fewer than 2^32 keys in a chunk");
        self.key_parts.push(parts);
        self.keys.insert(parts, k);
        k
    }

    /// Strings interned.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    pub fn event(&mut self, event_id: &str) -> EventId {
        self.intern_str(event_id)
    }

    /// `(type, state_key)` of an interned key.
    pub fn key_text(&self, key: KeyId) -> (&str, &str) {
        let (t, s) = self.key_parts[key as usize];
        (&self.texts[t as usize], &self.texts[s as usize])
    }

    pub fn event_text(&self, event: EventId) -> &str {
        &self.texts[event as usize]
    }

    pub fn row(&self, key: KeyId, event: EventId) -> StateRow {
        let (t, s) = self.key_text(key);
        StateRow::new(t, s, self.event_text(event))
    }
}

/// Two rows of one group share a key but name different events: Synapse's read picks
/// one arbitrarily, so the group's state is not well defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous(pub KeyId);

/// Entries shared by many states: sorted by key, at most one per key.
#[derive(Debug)]
struct Base {
    entries: Box<[Entry]>,
    /// Entries of the layers built on this base by `overlay` so far: once they reach the
    /// base's own size, the next state gets a base of its own (see `overlay`).
    layered: Cell<usize>,
}

type Entry = (KeyId, EventId);

thread_local! {
    static EMPTY: Rc<Base> = Rc::new(Base { entries: Box::new([]), layered: Cell::new(0) });
}

/// A set of `(key, event)` entries, at most one per key.
///
/// Structurally shared: a state is a `base`, shared by every state built on it, with a
/// small sorted `layer` on top that wins per key. The states along a chain differ by a
/// few entries each, so they share one base and hold only what changed since it (a
/// 50,000-member room's resolved states cost their layers, not 400 kB each), and the
/// planner's comparisons of two states on one base walk their layers only.
#[derive(Clone, Debug)]
pub struct State {
    base: Rc<Base>,
    layer: Vec<Entry>,
    /// Distinct keys of base and layer together.
    len: usize,
}

impl Default for State {
    fn default() -> State {
        State {
            base: EMPTY.with(Rc::clone),
            layer: Vec::new(),
            len: 0,
        }
    }
}

/// Equal as sets of entries, however each side is layered.
impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.len == other.len && self.delta_len(other) == 0
    }
}

impl Eq for State {}

/// Entries of a sorted `base` overlaid by a sorted `layer` (the layer wins per key), in
/// key order.
pub struct Iter<'a> {
    base: &'a [Entry],
    layer: &'a [Entry],
}

impl Iterator for Iter<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        match (self.base.first(), self.layer.first()) {
            (Some(&b), Some(&l)) => {
                if b.0 < l.0 {
                    self.base = &self.base[1..];
                    Some(b)
                } else {
                    if b.0 == l.0 {
                        self.base = &self.base[1..];
                    }
                    self.layer = &self.layer[1..];
                    Some(l)
                }
            }
            (Some(&b), None) => {
                self.base = &self.base[1..];
                Some(b)
            }
            (None, Some(&l)) => {
                self.layer = &self.layer[1..];
                Some(l)
            }
            (None, None) => None,
        }
    }
}

/// The event `entries` (sorted) name for `key`.
fn lookup(entries: &[Entry], key: KeyId) -> Option<EventId> {
    entries
        .binary_search_by_key(&key, |e| e.0)
        .ok()
        .map(|i| entries[i].1)
}

/// `a` overlaid by `b` (b wins per key), both sorted.
fn merge(a: impl Iterator<Item = Entry>, b: impl Iterator<Item = Entry>, cap: usize) -> Vec<Entry> {
    let mut out = Vec::with_capacity(cap);
    let (mut a, mut b) = (a.peekable(), b.peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(&x), Some(&y)) => match x.0.cmp(&y.0) {
                std::cmp::Ordering::Less => {
                    out.push(x);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(y);
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    out.push(y);
                    a.next();
                    b.next();
                }
            },
            (Some(_), None) => {
                out.extend(a);
                return out;
            }
            (None, _) => {
                out.extend(b);
                return out;
            }
        }
    }
}

impl State {
    /// The state named by one group's own rows. Exact duplicate rows (tolerated by
    /// Synapse) collapse; the same key with different events is `Ambiguous`.
    pub fn from_rows(dict: &mut Dictionary, rows: &[StateRow]) -> Result<State, Ambiguous> {
        let mut entries: Vec<Entry> = rows
            .iter()
            .map(|r| {
                (
                    dict.key(r.event_type(), r.state_key()),
                    dict.event(r.event_id()),
                )
            })
            .collect();
        entries.sort_unstable();
        entries.dedup();
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Ambiguous(w[0].0));
        }
        Ok(State::flat(entries))
    }

    pub fn from_sorted_unique(entries: Vec<Entry>) -> State {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        State::flat(entries)
    }

    /// A state with a base of its own and no layer.
    fn flat(entries: Vec<Entry>) -> State {
        if entries.is_empty() {
            return State::default();
        }
        State {
            len: entries.len(),
            base: Rc::new(Base {
                entries: entries.into_boxed_slice(),
                layered: Cell::new(0),
            }),
            layer: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            base: &self.base.entries,
            layer: &self.layer,
        }
    }

    /// Entries of the shared base, and of this state's own layer over it.
    pub fn layout(&self) -> (usize, usize) {
        (self.base.entries.len(), self.layer.len())
    }

    /// Whether both are built on the same shared base.
    pub fn shares_base(&self, other: &State) -> bool {
        Rc::ptr_eq(&self.base, &other.base)
    }

    /// Identifies the shared base, to count it once among many states.
    pub fn base_id(&self) -> *const () {
        Rc::as_ptr(&self.base).cast()
    }

    /// Estimated heap bytes of the shared base (its counters and entries).
    pub fn base_bytes(&self) -> usize {
        if self.base.entries.is_empty() {
            return 0;
        }
        size_of::<Base>()
            + 2 * size_of::<usize>()
            + ALLOC_OVERHEAD
            + vec_bytes::<Entry>(self.base.entries.len())
    }

    /// Estimated bytes this state holds apart from its shared base: the value and its
    /// layer (by capacity).
    pub fn layer_bytes(&self) -> usize {
        size_of::<State>() + vec_bytes::<Entry>(self.layer.capacity())
    }

    /// Estimated bytes held, the whole base included.
    pub fn heap_bytes(&self) -> usize {
        self.layer_bytes() + self.base_bytes()
    }

    /// Bytes `self` holds that `other` does not already: its layer alone when they
    /// share a base.
    pub fn bytes_beyond(&self, other: &State) -> usize {
        if self.shares_base(other) {
            self.layer_bytes()
        } else {
            self.heap_bytes()
        }
    }

    /// `self` with `delta` applied on top (delta wins per key), kept: it shares
    /// `self`'s base unless the layers built on that base would pass the base's own size
    /// (then it gets a base of its own). So the layers `overlay` builds on a base hold
    /// at most as many entries as the base: what it keeps is at most twice the bases,
    /// and a chain of states changing by c entries each shares a base over about
    /// √(2·size/c) states.
    pub fn overlay(&self, delta: &State) -> State {
        let layer = merge(
            self.layer.iter().copied(),
            delta.iter(),
            self.layer.len() + delta.len(),
        );
        let layered = self.base.layered.get() + layer.len();
        if layered > self.base.entries.len() {
            return State::flat(merge(
                self.base.entries.iter().copied(),
                layer.into_iter(),
                self.len + delta.len(),
            ));
        }
        self.base.layered.set(layered);
        let mut layer = layer;
        layer.shrink_to_fit();
        self.on_base(layer)
    }

    /// The same entries with a base of their own and no layer (moved, not copied, when
    /// the base is empty).
    pub fn flattened(self) -> State {
        if self.base.entries.is_empty() {
            State::flat(self.layer)
        } else {
            State::flat(self.iter().collect())
        }
    }

    /// `self` with `delta` applied on top, for a check that drops it at once: always on
    /// `self`'s base, and not counted against it.
    pub fn overlay_view(&self, delta: &State) -> State {
        let layer = merge(
            self.layer.iter().copied(),
            delta.iter(),
            self.layer.len() + delta.len(),
        );
        self.on_base(layer)
    }

    fn on_base(&self, layer: Vec<Entry>) -> State {
        let base = &self.base.entries;
        let len = base.len() + layer.iter().filter(|e| lookup(base, e.0).is_none()).count();
        State {
            base: self.base.clone(),
            layer,
            len,
        }
    }

    /// Whether `key` is a key of `self`, given it is not one of `layer`'s keys: the
    /// base decides.
    fn base_has(&self, key: KeyId) -> bool {
        lookup(&self.base.entries, key).is_some()
    }

    /// Whether every key of `self` is also a key of `other` (events may differ).
    /// A base must pass this: deltas cannot remove keys.
    pub fn keys_subset_of(&self, other: &State) -> bool {
        if self.len > other.len {
            return false;
        }
        if self.shares_base(other) {
            // The base's keys are both's: only the layer's own keys can be missing.
            return self
                .layer
                .iter()
                .all(|&(k, _)| other.base_has(k) || lookup(&other.layer, k).is_some());
        }
        let mut b = other.iter().peekable();
        for (k, _) in self.iter() {
            while b.next_if(|e| e.0 < k).is_some() {}
            if b.next_if(|e| e.0 == k).is_none() {
                return false;
            }
        }
        true
    }

    /// Calls `f` with each entry of `self` that `base` lacks or names differently, in
    /// key order. On a shared base only the two layers' keys can differ.
    fn for_each_delta(&self, base: &State, mut f: impl FnMut(Entry)) {
        if self.shares_base(base) {
            let (a, b) = (&self.layer, &base.layer);
            let (mut i, mut j) = (0, 0);
            while i < a.len() || j < b.len() {
                let take_a = j == b.len() || (i < a.len() && a[i].0 <= b[j].0);
                if take_a {
                    let (k, e) = a[i];
                    let theirs = if j < b.len() && b[j].0 == k {
                        j += 1;
                        Some(b[j - 1].1)
                    } else {
                        lookup(&self.base.entries, k)
                    };
                    if theirs != Some(e) {
                        f((k, e));
                    }
                    i += 1;
                } else {
                    // A key `base`'s layer changed and `self`'s did not: `self` names
                    // the shared base's event, if it has the key at all.
                    let (k, e) = b[j];
                    if let Some(mine) = lookup(&self.base.entries, k) {
                        if mine != e {
                            f((k, mine));
                        }
                    }
                    j += 1;
                }
            }
            return;
        }
        let mut b = base.iter().peekable();
        for (k, e) in self.iter() {
            while b.next_if(|x| x.0 < k).is_some() {}
            if b.next_if(|x| *x == (k, e)).is_none() {
                f((k, e));
            }
        }
    }

    /// The entries of `self` that `base` lacks or names differently: the smallest
    /// delta that turns `base` into `self`, given `base.keys_subset_of(self)`.
    pub fn delta_from(&self, base: &State) -> State {
        let mut out = Vec::new();
        self.for_each_delta(base, |e| out.push(e));
        State::flat(out)
    }

    /// `self.delta_from(base).len()`, without building the delta (the planner prices
    /// every candidate base with it).
    pub fn delta_len(&self, base: &State) -> usize {
        let mut n = 0;
        self.for_each_delta(base, |_| n += 1);
        n
    }

    pub fn rows(&self, dict: &Dictionary) -> Vec<StateRow> {
        self.iter().map(|(k, e)| dict.row(k, e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(d: &mut Dictionary, rows: &[(&str, &str, &str)]) -> State {
        let rows: Vec<StateRow> = rows
            .iter()
            .map(|(t, s, e)| StateRow::new(t, s, e))
            .collect();
        State::from_rows(d, &rows).unwrap()
    }

    #[test]
    fn overlay_subset_delta() {
        let mut d = Dictionary::default();
        let base = st(
            &mut d,
            &[("m.room.create", "", "$c"), ("m.room.member", "@a", "$a1")],
        );
        let full = st(
            &mut d,
            &[
                ("m.room.create", "", "$c"),
                ("m.room.member", "@a", "$a2"),
                ("m.room.member", "@b", "$b"),
            ],
        );
        assert!(base.keys_subset_of(&full));
        assert!(!full.keys_subset_of(&base));
        let delta = full.delta_from(&base);
        assert_eq!(delta.len(), 2);
        assert_eq!(base.overlay(&delta), full);
        assert_eq!(full.delta_from(&full).len(), 0);
    }

    #[test]
    fn duplicates_collapse_and_conflicts_are_ambiguous() {
        let mut d = Dictionary::default();
        let s = st(&mut d, &[("t", "k", "$1"), ("t", "k", "$1")]);
        assert_eq!(s.len(), 1);
        let rows = vec![StateRow::new("t", "k", "$1"), StateRow::new("t", "k", "$2")];
        assert!(State::from_rows(&mut d, &rows).is_err());
    }

    #[test]
    fn dictionary_round_trips_hostile_strings() {
        let mut d = Dictionary::default();
        let weird = "'); DROP TABLE state_groups; --\t\n\\ é 🚀";
        let k = d.key(weird, "");
        let e = d.event(weird);
        assert_eq!(d.row(k, e), StateRow::new(weird, "", weird));
    }
}
