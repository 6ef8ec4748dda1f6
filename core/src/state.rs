//! Interned state: `(type, state_key)` pairs and event ids become small integers, and a
//! group's state is a sorted vector of `(key, event)` pairs.
//!
//! A state map of N entries costs 8·N bytes and every operation the planner needs
//! (overlay, key-subset test, delta) is one linear merge of two sorted vectors.

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

/// A set of `(key, event)` entries, sorted by key, at most one per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    entries: Vec<(KeyId, EventId)>,
}

impl State {
    /// The state named by one group's own rows. Exact duplicate rows (tolerated by
    /// Synapse) collapse; the same key with different events is `Ambiguous`.
    pub fn from_rows(dict: &mut Dictionary, rows: &[StateRow]) -> Result<State, Ambiguous> {
        let mut entries: Vec<(KeyId, EventId)> = rows
            .iter()
            .map(|r| {
                (
                    dict.key(&r.event_type, &r.state_key),
                    dict.event(&r.event_id),
                )
            })
            .collect();
        entries.sort_unstable();
        entries.dedup();
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Ambiguous(w[0].0));
        }
        Ok(State { entries })
    }

    pub fn from_sorted_unique(entries: Vec<(KeyId, EventId)>) -> State {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        State { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[(KeyId, EventId)] {
        &self.entries
    }

    /// Estimated bytes held: the value and its entries (by capacity).
    pub fn heap_bytes(&self) -> usize {
        size_of::<State>() + vec_bytes::<(KeyId, EventId)>(self.entries.capacity())
    }

    /// `self` with `delta` applied on top (delta wins per key).
    pub fn overlay(&self, delta: &State) -> State {
        let (a, b) = (&self.entries, &delta.entries);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => {
                    out.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(b[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push(b[j]);
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        State { entries: out }
    }

    /// Whether every key of `self` is also a key of `other` (events may differ).
    /// A base must pass this: deltas cannot remove keys.
    pub fn keys_subset_of(&self, other: &State) -> bool {
        if self.entries.len() > other.entries.len() {
            return false;
        }
        let mut j = 0;
        let b = &other.entries;
        for &(k, _) in &self.entries {
            while j < b.len() && b[j].0 < k {
                j += 1;
            }
            if j == b.len() || b[j].0 != k {
                return false;
            }
            j += 1;
        }
        true
    }

    /// The entries of `self` that `base` lacks or names differently: the smallest
    /// delta that turns `base` into `self`, given `base.keys_subset_of(self)`.
    pub fn delta_from(&self, base: &State) -> State {
        let b = &base.entries;
        let mut j = 0;
        let mut out = Vec::new();
        for &(k, e) in &self.entries {
            while j < b.len() && b[j].0 < k {
                j += 1;
            }
            if j < b.len() && b[j].0 == k && b[j].1 == e {
                continue;
            }
            out.push((k, e));
        }
        State { entries: out }
    }

    /// `self.delta_from(base).len()`, without building the delta (the planner prices
    /// every candidate base with it).
    pub fn delta_len(&self, base: &State) -> usize {
        let b = &base.entries;
        let mut j = 0;
        let mut n = 0;
        for &(k, e) in &self.entries {
            while j < b.len() && b[j].0 < k {
                j += 1;
            }
            if !(j < b.len() && b[j] == (k, e)) {
                n += 1;
            }
        }
        n
    }

    pub fn rows(&self, dict: &Dictionary) -> Vec<StateRow> {
        self.entries.iter().map(|&(k, e)| dict.row(k, e)).collect()
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
