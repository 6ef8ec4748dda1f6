//! Independent checks of a plan before anything is written, and of the write after it.
//!
//! They recompute from the plan's output alone, sharing no code path with the
//! planner's choices (states are compared entry by entry, not through `State`'s
//! shared-base shortcuts the planner prices with), so a planner bug surfaces here as
//! an error instead of as silently changed room state.

use crate::error::{Error, Result};
use crate::model::{GroupId, RawGroup, StateRow};
use crate::state::State;
use crate::store::Rewrite;

/// A rewritten group, as the planner proposes it.
pub struct Proposal<'a> {
    pub group: GroupId,
    pub prev: Option<GroupId>,
    pub delta: &'a State,
    /// The group's resolved state before the rewrite.
    pub target: &'a State,
}

/// The proposed predecessor, as it stands (it is unchanged, or itself verified).
pub struct Base<'a> {
    pub state: &'a State,
    pub depth: u32,
}

/// Whether every key of `base` is a key of `target`: a walk of both.
fn keys_within(base: &State, target: &State) -> bool {
    let mut t = target.iter().peekable();
    base.iter().all(|(k, _)| {
        while t.next_if(|e| e.0 < k).is_some() {}
        t.next_if(|e| e.0 == k).is_some()
    })
}

/// The entries of `base` with `delta` on top (delta wins per key), in key order: a
/// merge of the two walks.
fn overlaid<'a>(base: &'a State, delta: &'a State) -> impl Iterator<Item = (u32, u32)> + 'a {
    let (mut b, mut d) = (base.iter().peekable(), delta.iter().peekable());
    std::iter::from_fn(move || match (b.peek().copied(), d.peek().copied()) {
        (Some(x), Some(y)) if x.0 < y.0 => b.next(),
        (Some(x), Some(y)) => {
            if x.0 == y.0 {
                b.next();
            }
            d.next()
        }
        (Some(_), None) => b.next(),
        (None, _) => d.next(),
    })
}

/// Check one rewrite: predecessor id lower, predecessor keys ⊆ group keys, resolved
/// state unchanged, and the chain within `max_hops`. Returns the group's new depth.
pub fn check_rewrite(p: &Proposal, base: Option<Base>, max_hops: u32) -> Result<u32> {
    let fail = |reason: String| {
        Err(Error::Verification {
            group: p.group,
            reason,
        })
    };
    match (p.prev, base) {
        (None, None) => {
            if !p.delta.iter().eq(p.target.iter()) {
                return fail("a full snapshot must hold exactly the group's state".into());
            }
            Ok(0)
        }
        (Some(prev), Some(base)) => {
            if prev >= p.group {
                return fail(format!("predecessor {prev} is not lower than the group"));
            }
            if !keys_within(base.state, p.target) {
                return fail(format!("predecessor {prev} has keys the group lacks"));
            }
            if !overlaid(base.state, p.delta).eq(p.target.iter()) {
                return fail(format!(
                    "state through predecessor {prev} differs from the original"
                ));
            }
            let depth = base.depth + 1;
            if depth > max_hops {
                return fail(format!(
                    "chain of {depth} hops exceeds the bound of {max_hops}"
                ));
            }
            Ok(depth)
        }
        _ => fail("predecessor and its state disagree".into()),
    }
}

/// Check that the database now holds exactly the planned edges and rows.
pub fn check_read_back(planned: &[Rewrite], stored: &[RawGroup]) -> Result<()> {
    let mut stored: Vec<&RawGroup> = stored.iter().collect();
    stored.sort_by_key(|g| g.id);
    let mut planned: Vec<&Rewrite> = planned.iter().collect();
    planned.sort_by_key(|r| r.group);
    if stored.len() != planned.len() {
        let group = planned.first().map_or(0, |r| r.group);
        return Err(Error::Concurrent {
            group,
            reason: format!(
                "{} groups read back, {} written",
                stored.len(),
                planned.len()
            ),
        });
    }
    for (want, got) in planned.iter().zip(stored) {
        let fail = |reason: &str| {
            Err(Error::Concurrent {
                group: want.group,
                reason: reason.into(),
            })
        };
        if got.id != want.group {
            return fail("group missing after the write");
        }
        if got.prevs != want.prev.into_iter().collect::<Vec<_>>() {
            return fail("stored predecessor differs from the one written");
        }
        let mut a: Vec<&StateRow> = want.rows.iter().collect();
        let mut b: Vec<&StateRow> = got.rows.iter().collect();
        a.sort();
        b.sort();
        if a != b {
            return fail("stored rows differ from the ones written");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(entries: &[(u32, u32)]) -> State {
        State::from_sorted_unique(entries.to_vec())
    }

    /// Checks `delta` on `base` for a group whose state is `target`.
    fn check(base: &State, delta: &State, target: &State) -> Result<u32> {
        let p = Proposal {
            group: 10,
            prev: Some(5),
            delta,
            target,
        };
        let b = Base {
            state: base,
            depth: 3,
        };
        check_rewrite(&p, Some(b), 4)
    }

    fn refused(r: Result<u32>, why: &str) {
        match r {
            Err(Error::Verification { reason, .. }) => assert!(reason.contains(why), "{reason}"),
            r => panic!("expected a refusal ({why}), got {r:?}"),
        }
    }

    /// States on one shared base, as the engine builds them along a chain: the check
    /// walks their entries and does not take the planner's shortcuts.
    #[test]
    fn a_rewrite_is_checked_entry_by_entry_on_a_shared_base() {
        let snapshot = st(&[(1, 1), (2, 2), (3, 3), (4, 4)]);
        let base = snapshot.overlay_view(&st(&[(2, 20), (5, 5)]));
        let target = snapshot.overlay_view(&st(&[(2, 20), (3, 30), (5, 5), (6, 6)]));
        assert!(base.shares_base(&target));
        assert_eq!(check(&base, &st(&[(3, 30), (6, 6)]), &target).unwrap(), 4);
        // A delta missing an entry, naming another event, or adding one.
        for wrong in [
            st(&[(3, 30)]),
            st(&[(3, 31), (6, 6)]),
            st(&[(3, 30), (6, 6), (7, 7)]),
            st(&[(2, 2), (3, 30), (6, 6)]),
        ] {
            refused(check(&base, &wrong, &target), "differs from the original");
        }
        // A base with a key the group lacks.
        let wider = snapshot.overlay_view(&st(&[(2, 20), (5, 5), (9, 9)]));
        refused(
            check(&wider, &st(&[(3, 30), (6, 6)]), &target),
            "has keys the group lacks",
        );
        // Too deep.
        let p = Proposal {
            group: 10,
            prev: Some(5),
            delta: &st(&[(3, 30), (6, 6)]),
            target: &target,
        };
        let deep = Base {
            state: &base,
            depth: 4,
        };
        refused(check_rewrite(&p, Some(deep), 4), "exceeds the bound");
    }

    #[test]
    fn a_snapshot_must_hold_the_state_and_a_predecessor_must_be_lower() {
        let snapshot = st(&[(1, 1), (2, 2)]);
        let target = snapshot.overlay_view(&st(&[(3, 3)]));
        let ok = |delta: &State| {
            check_rewrite(
                &Proposal {
                    group: 10,
                    prev: None,
                    delta,
                    target: &target,
                },
                None,
                4,
            )
        };
        assert_eq!(ok(&st(&[(1, 1), (2, 2), (3, 3)])).unwrap(), 0);
        refused(ok(&st(&[(1, 1), (2, 2)])), "exactly the group's state");
        refused(ok(&snapshot), "exactly the group's state");
        let p = Proposal {
            group: 10,
            prev: Some(10),
            delta: &st(&[(3, 3)]),
            target: &target,
        };
        let b = Base {
            state: &snapshot,
            depth: 0,
        };
        refused(check_rewrite(&p, Some(b), 4), "not lower");
    }
}
