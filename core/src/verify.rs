//! Independent checks of a plan before anything is written, and of the write after it.
//!
//! They recompute from the plan's output alone, sharing no code path with the
//! planner's choices, so a planner bug surfaces here as an error instead of as
//! silently changed room state.

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
            if p.delta != p.target {
                return fail("a full snapshot must hold exactly the group's state".into());
            }
            Ok(0)
        }
        (Some(prev), Some(base)) => {
            if prev >= p.group {
                return fail(format!("predecessor {prev} is not lower than the group"));
            }
            if !base.state.keys_subset_of(p.target) {
                return fail(format!("predecessor {prev} has keys the group lacks"));
            }
            if base.state.overlay_view(p.delta) != *p.target {
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
