//! Choosing each group's new predecessor and delta.
//!
//! Groups are taken in id order and placed by the existing tool's levels, which
//! propose a candidate predecessor. A group whose candidate is its current
//! predecessor is kept as it is. Otherwise two bases compete, and the one giving the
//! smaller delta wins (the level choice on a tie):
//!
//! - the level choice: the candidate, or failing it the candidate's own new
//!   predecessor and so on up the new tree, the first that is usable and whose keys
//!   are a subset of the group's (the existing tool's rule);
//! - the branch choice: the group's stored predecessor, i.e. its real branch, or the
//!   nearest of its ancestors in the new tree that is shallow enough (below).
//!
//! A group with no stored predecessor (a snapshot Synapse wrote, or a group its
//! deletion loop "de-deltaed") has no branch to follow, and in rooms with forks the
//! level choice restates a whole branch. So when the level choice costs more than
//! `RECENT_MIN_COST` rows, such a group (and one that would otherwise be a forced
//! snapshot) also tries the recent choice: among the last `RECENT_GROUPS` groups
//! placed in the same call (one slice of a chunk, whose states are in memory anyway:
//! nothing is read for it), the one with the smallest delta whose keys are a subset
//! of the group's, within the same depth budget. A de-deltaed group was usually
//! written a few groups after its old predecessor.
//!
//! With none of these, the group becomes a full snapshot (a forced snapshot).
//!
//! In rooms with forks (federation forks, spam joins, backfilled roots) consecutive
//! groups belong to different branches, so the level choice alone restates whole
//! branches in every delta; the branch choice keeps such groups one row.
//!
//! Depth: the levels give each group a depth (`Levels::depth_budget`: the depth the
//! level choice puts it at, as the existing tool's tree would but for the first group
//! holding a place in every level, see `Levels::place`). The branch choice may not
//! make a group deeper than that (nor than the level choice): chains stay within the
//! sum of the level sizes, and level heads within what saved levels promise. Only the
//! levels carry over between chunks; the level and branch choices come from the new
//! tree as it stands, whatever the chunks. The recent choice sees only its own slice,
//! so where a slice starts can change which base a snapshot group gets
//! (never any group's state).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::error::Result;
use crate::hash::FxHashMap;
use crate::levels::Levels;
use crate::model::GroupId;
use crate::state::State;

/// Groups the recent choice looks back over (see the module doc).
pub const RECENT_GROUPS: usize = 32;
/// The recent choice is tried only when the other choices' delta has more rows: a
/// snapshot in a linear chain is one row from its level choice already.
pub const RECENT_MIN_COST: usize = 2;

/// Why a group is left exactly as it is and never used as a base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Pending deletion or being persisted by Synapse.
    Frozen,
    /// Its stored state is not well defined (cycle, several predecessors, a predecessor
    /// with a higher id, conflicting duplicate rows, or such a group up its chain).
    Broken(Broken),
    /// A malformed group reaches it over stored edges (see `Store::tangled`).
    Tangled,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Frozen => write!(f, "pending deletion or being persisted"),
            SkipReason::Broken(why) => write!(f, "{why}"),
            SkipReason::Tangled => write!(
                f,
                "a malformed group (several predecessors, or a higher one) reaches it"
            ),
        }
    }
}

/// Why a group's stored state is not well defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Its own rows name one key with different events.
    ConflictingRows,
    /// Its predecessor's id is not lower than its own.
    PredecessorNotLower(GroupId),
    /// It has this many predecessors.
    SeveralPredecessors(usize),
    /// Its predecessor (in the same chunk) is broken.
    PredecessorBroken(GroupId),
    /// A group below the chunk was not found where its chain was read.
    NotLoaded(GroupId),
    /// A chain ended at a group that still had a predecessor.
    InconsistentChain,
    /// A group on the chain has a predecessor not lower than itself.
    ChainPredecessorNotLower { group: GroupId, prev: GroupId },
    /// The chain of this group is cyclic or longer than `MAX_RESOLVE_HOPS`.
    CyclicOrTooLong(GroupId),
    /// A group on the chain has several predecessors.
    ChainSeveralPredecessors { group: GroupId, count: usize },
    /// A group on the chain has rows naming one key with different events.
    ChainConflictingRows(GroupId),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::ConflictingRows => write!(f, "rows name one key with different events"),
            Broken::PredecessorNotLower(p) => write!(f, "predecessor {p} is not lower"),
            Broken::SeveralPredecessors(n) => write!(f, "{n} predecessors"),
            Broken::PredecessorBroken(p) => write!(f, "predecessor {p} is broken"),
            Broken::NotLoaded(id) => write!(f, "group {id} was not loaded"),
            Broken::InconsistentChain => write!(f, "inconsistent chain"),
            Broken::ChainPredecessorNotLower { group, prev } => {
                write!(f, "group {group} has predecessor {prev}, not lower")
            }
            Broken::CyclicOrTooLong(id) => write!(
                f,
                "chain of {id} is cyclic or longer than {} hops",
                crate::engine::MAX_RESOLVE_HOPS
            ),
            Broken::ChainSeveralPredecessors { group, count } => {
                write!(f, "group {group} has {count} predecessors")
            }
            Broken::ChainConflictingRows(g) => {
                write!(f, "group {g} has conflicting duplicate rows")
            }
        }
    }
}

/// One group of a chunk, loaded and resolved.
pub struct Input {
    pub id: GroupId,
    /// The stored predecessor (`None` for a snapshot, and for broken groups).
    pub orig_prev: Option<GroupId>,
    /// The group's own rows, deduplicated (for broken groups: empty).
    pub own: State,
    /// The resolved state (`None` when broken).
    pub state: Option<Rc<State>>,
    pub skip: Option<SkipReason>,
}

/// A group as the new tree stands: its state, predecessor and chain depth (hops).
#[derive(Clone, Debug)]
pub struct Node {
    pub state: Rc<State>,
    pub depth: u32,
    pub prev: Option<GroupId>,
    /// May serve as a base: in the room, not frozen, well-defined state.
    pub usable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Rewrite {
        prev: Option<GroupId>,
        delta: State,
        forced_snapshot: bool,
    },
    Skip(SkipReason),
}

pub struct Planned {
    pub id: GroupId,
    pub decision: Decision,
}

pub struct ChunkPlan {
    pub planned: Vec<Planned>,
    /// The new-tree node of every kept or rewritten group of the chunk.
    pub nodes: FxHashMap<GroupId, Rc<Node>>,
}

/// Plan one chunk. `recent_choice`: whether snapshot groups try it (module doc).
/// `outside` gives the node of a group below the chunk as the new tree stands (from
/// earlier chunks or the database).
pub fn plan_chunk(
    inputs: &[Input],
    levels: &mut Levels,
    recent_choice: bool,
    outside: &mut dyn FnMut(GroupId) -> Result<Rc<Node>>,
) -> Result<ChunkPlan> {
    let mut nodes: FxHashMap<GroupId, Rc<Node>> = FxHashMap::default();
    let mut planned = Vec::with_capacity(inputs.len());
    let mut recent: VecDeque<GroupId> = VecDeque::with_capacity(RECENT_GROUPS);
    for input in inputs {
        let state = match (&input.skip, &input.state) {
            (None, Some(state)) => state,
            (Some(reason), _) => {
                planned.push(Planned {
                    id: input.id,
                    decision: Decision::Skip(reason.clone()),
                });
                continue;
            }
            (None, None) => unreachable!("a group without state is always skipped"),
        };
        let mut node_of = |id: GroupId| -> Result<Rc<Node>> {
            match nodes.get(&id) {
                Some(n) => Ok(n.clone()),
                None => outside(id),
            }
        };
        let candidate = levels.place(input.id);
        let (decision, prev, depth) = if candidate == input.orig_prev {
            let depth = match candidate {
                Some(p) => node_of(p)?.depth + 1,
                None => 0,
            };
            (Decision::Keep, candidate, depth)
        } else {
            // The level choice: the candidate, or failing it the nearest ancestor in
            // the new tree that can serve as a base.
            let mut level = None;
            let mut walk = candidate;
            while let Some(b) = walk {
                let n = node_of(b)?;
                if n.usable && n.state.keys_subset_of(state) {
                    level = Some((b, n));
                    break;
                }
                walk = n.prev;
            }
            let level_depth = level.as_ref().map_or(0, |(_, n)| n.depth + 1);
            // Another base may not make the group deeper than the levels would.
            let budget = levels.depth_budget().max(level_depth);
            let mut best_cost = match &level {
                Some((_, n)) => state.delta_len(&n.state),
                None => state.len(),
            };
            let mut best = level;
            // The branch choice: the stored predecessor (the group's real branch), or
            // the nearest of its ancestors in the new tree shallow enough. Each hop up
            // is one shallower and usually adds a key to the delta, and a hop off the
            // chunk costs the engine a chain load; so the walk is tried only while
            // the hops it needs stay under half the level choice's delta. That skips
            // the common case of a level restarting, where the walk would end on the
            // level choice itself. Only usable groups' depths are trusted: a frozen
            // group's depth depends on writes a dry run does not make.
            let mut walk = input.orig_prev;
            let mut hops = 0;
            while let Some(b) = walk {
                if 2 * hops >= best_cost || best.as_ref().is_some_and(|(id, _)| *id == b) {
                    break;
                }
                let n = node_of(b)?;
                if n.usable {
                    let still = (n.depth + 1).saturating_sub(budget) as usize;
                    if 2 * (hops + still) >= best_cost {
                        break;
                    }
                    if still == 0 && n.state.keys_subset_of(state) {
                        let cost = state.delta_len(&n.state);
                        if cost < best_cost {
                            best_cost = cost;
                            best = Some((b, n));
                        }
                        break;
                    }
                }
                walk = n.prev;
                hops += 1;
            }
            // The recent choice (see the module doc): only this call's nodes.
            if recent_choice
                && (input.orig_prev.is_none() || best.is_none())
                && best_cost > RECENT_MIN_COST
            {
                for b in recent.iter().rev() {
                    let n = &nodes[b];
                    // A delta holds at least the keys the base lacks.
                    if n.depth + 1 > budget
                        || state.len().saturating_sub(n.state.len()) >= best_cost
                        || !n.state.keys_subset_of(state)
                    {
                        continue;
                    }
                    let cost = state.delta_len(&n.state);
                    if cost < best_cost {
                        best_cost = cost;
                        best = Some((*b, n.clone()));
                    }
                }
            }
            let base = best.as_ref().map(|(id, _)| *id);
            let delta = match &best {
                Some((_, n)) => state.delta_from(&n.state),
                None => (**state).clone(),
            };
            debug_assert_eq!(delta.len(), best_cost);
            let depth = best.as_ref().map_or(0, |(_, n)| n.depth + 1);
            // Landing back on the stored predecessor with the stored delta is no change.
            if base == input.orig_prev && delta == input.own {
                (Decision::Keep, base, depth)
            } else {
                let forced_snapshot = candidate.is_some() && base.is_none();
                (
                    Decision::Rewrite {
                        prev: base,
                        delta,
                        forced_snapshot,
                    },
                    base,
                    depth,
                )
            }
        };
        if recent.len() == RECENT_GROUPS {
            recent.pop_front();
        }
        recent.push_back(input.id);
        nodes.insert(
            input.id,
            Rc::new(Node {
                state: state.clone(),
                depth,
                prev,
                usable: true,
            }),
        );
        planned.push(Planned {
            id: input.id,
            decision,
        });
    }
    Ok(ChunkPlan { planned, nodes })
}
