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
    s.entries().iter().copied().collect()
}

fn sorted_unique(s: &State) -> bool {
    s.entries().windows(2).all(|w| w[0].0 < w[1].0)
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
            let events = want.entry((r.event_type.clone(), r.state_key.clone())).or_default();
            if !events.contains(&r.event_id) {
                events.push(r.event_id.clone());
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
