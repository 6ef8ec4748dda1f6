//! Property tests of the small pure pieces the planner stands on: the `State` algebra
//! (overlay, key subset, delta, and `delta_len`, the delta's hand-optimised length)
//! checked against a `BTreeMap` model, and `LevelSpec::parse`.

mod common;
use common::proptest_config;

use std::collections::BTreeMap;

use proptest::prelude::*;
use synapse_compress_core::levels::{MAX_LEVELS, MAX_LEVEL_SIZE};
use synapse_compress_core::state::{Dictionary, EventId, KeyId, State};
use synapse_compress_core::{LevelSpec, StateRow};

type Model = BTreeMap<KeyId, EventId>;

/// Few keys and events, so that states share keys and sometimes events.
fn model() -> impl Strategy<Value = Model> {
    prop::collection::btree_map(0..24u32, 0..4u32, 0..16)
}

fn state(m: &Model) -> State {
    State::from_sorted_unique(m.iter().map(|(&k, &e)| (k, e)).collect())
}

fn of(s: &State) -> Model {
    s.iter().collect()
}

fn sorted_unique(s: &State) -> bool {
    let entries: Vec<_> = s.iter().collect();
    entries.windows(2).all(|w| w[0].0 < w[1].0) && entries.len() == s.len()
}

/// `a` overlaid by `d` (d wins per key), in the model.
fn over(a: &Model, d: &Model) -> Model {
    let mut out = a.clone();
    out.extend(d.iter().map(|(&k, &e)| (k, e)));
    out
}

/// Two states layered on one shared base (`overlay_view` never gives a state a base
/// of its own): the planner compares such states through their layers only.
fn layered(base: &Model, d1: &Model, d2: &Model, d3: &Model) -> (State, State, Model, Model) {
    let b = state(base);
    let x = b.overlay_view(&state(d1));
    let y = b.overlay_view(&state(d2)).overlay_view(&state(d3));
    (x, y, over(base, d1), over(&over(base, d2), d3))
}

proptest! {
    #![proptest_config(proptest_config(2000))]

    #[test]
    fn overlay_is_the_union_where_the_delta_wins(a in model(), d in model()) {
        let o = state(&a).overlay(&state(&d));
        let mut want = a.clone();
        want.extend(d.iter().map(|(&k, &e)| (k, e)));
        prop_assert!(sorted_unique(&o));
        prop_assert_eq!(of(&o), want);
    }

    #[test]
    fn overlay_is_associative_with_the_empty_state_as_identity(
        a in model(), b in model(), c in model()
    ) {
        let (a, b, c) = (state(&a), state(&b), state(&c));
        prop_assert_eq!(a.overlay(&b).overlay(&c), a.overlay(&b.overlay(&c)));
        prop_assert_eq!(a.overlay(&State::default()), a.clone());
        prop_assert_eq!(State::default().overlay(&a), a.clone());
        prop_assert_eq!(a.overlay(&a), a);
    }

    #[test]
    fn keys_subset_of_compares_key_sets(a in model(), b in model()) {
        let want = a.keys().all(|k| b.contains_key(k));
        prop_assert_eq!(state(&a).keys_subset_of(&state(&b)), want);
        prop_assert!(state(&a).keys_subset_of(&state(&a).overlay(&state(&b))));
    }

    #[test]
    fn delta_from_is_what_the_base_lacks_or_names_differently(s in model(), base in model()) {
        let d = state(&s).delta_from(&state(&base));
        let want: Model = s
            .iter()
            .filter(|(k, e)| base.get(k) != Some(e))
            .map(|(&k, &e)| (k, e))
            .collect();
        prop_assert!(sorted_unique(&d));
        prop_assert_eq!(of(&d), want);
    }

    /// On a base whose keys are a subset, the delta rebuilds the state exactly (and
    /// nothing smaller could: every entry of it differs from the base).
    #[test]
    fn delta_on_a_subset_base_rebuilds_the_state(s in model(), base in model()) {
        // Make the base's keys a subset of the state's: keep only shared keys.
        let base: Model = base.into_iter().filter(|(k, _)| s.contains_key(k)).collect();
        let (s, base) = (state(&s), state(&base));
        prop_assert!(base.keys_subset_of(&s));
        prop_assert_eq!(base.overlay(&s.delta_from(&base)), s.clone());
        prop_assert_eq!(s.delta_from(&s).len(), 0);
        prop_assert_eq!(s.delta_from(&State::default()), s);
    }

    #[test]
    fn delta_len_is_the_length_of_delta_from(s in model(), base in model()) {
        let (s, base) = (state(&s), state(&base));
        prop_assert_eq!(s.delta_len(&base), s.delta_from(&base).len());
        prop_assert_eq!(base.delta_len(&s), base.delta_from(&s).len());
    }

    /// States on one shared base answer every question as flat copies of them do:
    /// equality, length, key subset, delta and its length, overlay.
    #[test]
    fn layered_states_behave_as_their_entries(
        base in model(), d1 in model(), d2 in model(), d3 in model()
    ) {
        let (x, y, mx, my) = layered(&base, &d1, &d2, &d3);
        prop_assert!(x.shares_base(&y));
        let (fx, fy) = (state(&mx), state(&my));
        prop_assert!(!fx.shares_base(&fy) || mx.is_empty());
        prop_assert!(sorted_unique(&x) && sorted_unique(&y));
        prop_assert_eq!(of(&x), mx.clone());
        prop_assert_eq!(x == y, mx == my);
        prop_assert_eq!(&x, &fx);
        prop_assert_eq!(&fx, &x);
        prop_assert_eq!(x.keys_subset_of(&y), fx.keys_subset_of(&fy));
        prop_assert_eq!(y.keys_subset_of(&x), fy.keys_subset_of(&fx));
        prop_assert_eq!(x.delta_from(&y), fx.delta_from(&fy));
        prop_assert_eq!(of(&x.delta_from(&y)), of(&fx.delta_from(&fy)));
        prop_assert_eq!(x.delta_len(&y), fx.delta_len(&fy));
        prop_assert_eq!(y.delta_len(&x), fy.delta_len(&fx));
        // Mixed: one layered, one flat.
        prop_assert_eq!(x.delta_len(&fy), fx.delta_len(&fy));
        prop_assert_eq!(x.keys_subset_of(&fy), fx.keys_subset_of(&fy));
        prop_assert_eq!(of(&x.overlay(&y)), over(&mx, &my));
        prop_assert_eq!(of(&x.overlay_view(&y)), over(&mx, &my));
    }

    /// A chain of kept overlays holds the chain's entries however often it moves to a
    /// base of its own, and the layers on one base never pass the base's size.
    #[test]
    fn kept_overlays_hold_the_chain_and_bound_their_layers(
        start in model(), deltas in prop::collection::vec(model(), 1..24)
    ) {
        let mut s = state(&start);
        let mut want = start.clone();
        let mut states = vec![s.clone()];
        for d in &deltas {
            s = s.overlay(&state(d));
            want = over(&want, d);
            prop_assert!(sorted_unique(&s));
            prop_assert_eq!(of(&s), want.clone());
            states.push(s.clone());
        }
        // Per base: the layers of the states on it hold at most as many entries as it.
        let mut per_base: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for s in &states {
            let (base, layer) = s.layout();
            let e = per_base.entry(s.base_id() as usize).or_default();
            e.0 = base;
            e.1 += layer;
        }
        for (base, layers) in per_base.values() {
            prop_assert!(layers <= base, "layers of {layers} entries on a base of {base}");
        }
    }

    /// `from_rows` interns rows into a state: exact duplicates collapse, a key named
    /// with two events is ambiguous, and `rows` gives the rows back.
    #[test]
    fn from_rows_collapses_duplicates_and_rejects_conflicts(
        rows in prop::collection::vec((0..3usize, 0..4usize, 0..3usize), 0..12)
    ) {
        const TYPES: [&str; 3] = ["m.room.member", "m.room.name", "t\\\t\n"];
        const KEYS: [&str; 4] = ["", "@a:hs", "@b:hs", "ü 🎉"];
        let rows: Vec<StateRow> = rows
            .iter()
            .map(|&(t, k, e)| StateRow::new(TYPES[t], KEYS[k], &format!("$e{e}")))
            .collect();
        let mut want: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for r in &rows {
            let events = want.entry((r.event_type().to_owned(), r.state_key().to_owned())).or_default();
            if !events.iter().any(|e| e == r.event_id()) {
                events.push(r.event_id().to_owned());
            }
        }
        let mut dict = Dictionary::default();
        match State::from_rows(&mut dict, &rows) {
            Ok(s) => {
                prop_assert!(want.values().all(|e| e.len() == 1));
                prop_assert!(sorted_unique(&s));
                let mut back = s.rows(&dict);
                back.sort();
                let mut unique = rows.clone();
                unique.sort();
                unique.dedup();
                prop_assert_eq!(back, unique);
            }
            Err(_) => prop_assert!(want.values().any(|e| e.len() > 1)),
        }
    }
}

/// A list of level sizes written with optional blanks around each size.
fn spaced(sizes: &[u32], blanks: &[(usize, usize)]) -> String {
    const BLANKS: [&str; 4] = ["", " ", "\t", "  "];
    let parts: Vec<String> = sizes
        .iter()
        .zip(blanks.iter().cycle())
        .map(|(n, (l, r))| format!("{}{n}{}", BLANKS[*l], BLANKS[*r]))
        .collect();
    parts.join(",")
}

/// Text that is almost a level list: digits, commas, blanks, signs and a few letters.
fn near_level_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "0",
            "1",
            "5",
            "9",
            "10000",
            "10001",
            ",",
            ",",
            " ",
            "\t",
            "-",
            "+",
            ".",
            "a",
            "",
            "\u{0}",
            "é",
            "99999999999999999999",
        ]),
        0..14,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(proptest_config(2000))]

    #[test]
    fn level_lists_round_trip(
        sizes in prop::collection::vec(1..=MAX_LEVEL_SIZE, 1..=MAX_LEVELS),
        blanks in prop::collection::vec((0..4usize, 0..4usize), 1..4),
    ) {
        let spec = LevelSpec::parse(&spaced(&sizes, &blanks)).expect("a valid list");
        prop_assert_eq!(spec.sizes(), &sizes[..]);
        prop_assert_eq!(spec.max_hops(), sizes.iter().sum::<u32>());
        let text = spec.to_string();
        prop_assert_eq!(&text, &spaced(&sizes, &[(0, 0)]));
        prop_assert_eq!(LevelSpec::parse(&text).expect("its own text"), spec);
    }

    /// Any text: never a panic; accepted exactly when it is 1 to MAX_LEVELS
    /// comma-separated whole numbers in 1..=MAX_LEVEL_SIZE; accepted text prints as a
    /// list that parses back to the same levels.
    #[test]
    fn level_text_is_accepted_only_when_well_formed(
        text in prop_oneof![near_level_text(), any::<String>()]
    ) {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let well_formed = !text.trim().is_empty()
            && parts.len() <= MAX_LEVELS
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.trim_start_matches('+').chars().all(|c| c.is_ascii_digit())
                    && p.matches('+').count() <= 1
                    && p.trim_start_matches('+').parse::<u64>()
                        .is_ok_and(|n| (1..=u64::from(MAX_LEVEL_SIZE)).contains(&n))
            });
        match LevelSpec::parse(&text) {
            Ok(spec) => {
                prop_assert!(well_formed, "{:?} accepted", text);
                prop_assert_eq!(spec.sizes().len(), parts.len());
                prop_assert_eq!(LevelSpec::parse(&spec.to_string()).expect("its own text"), spec);
            }
            Err(e) => {
                prop_assert!(!well_formed, "{:?} rejected: {}", text, e);
            }
        }
    }

    /// A valid list with one part made malformed is rejected.
    #[test]
    fn one_bad_part_rejects_the_list(
        sizes in prop::collection::vec(1..=MAX_LEVEL_SIZE, 1..=MAX_LEVELS),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec![
            "", " ", "0", "-1", "10001", "1.5", "1e3", "x", "1 2", "0x10", "--1", "++1",
            "4294967297", "99999999999999999999",
        ]),
    ) {
        let mut parts: Vec<String> = sizes.iter().map(u32::to_string).collect();
        let i = at.index(parts.len());
        parts[i] = bad.to_owned();
        let text = parts.join(",");
        prop_assert!(LevelSpec::parse(&text).is_err(), "{:?} accepted", text);
    }
}

#[test]
fn too_many_levels_are_rejected() {
    let text = ["1"; MAX_LEVELS + 1].join(",");
    assert!(LevelSpec::parse(&text).is_err());
    assert!(LevelSpec::parse(&["1"; MAX_LEVELS].join(",")).is_ok());
}
