//! Choosing each group's new predecessor and delta (the existing tool's semantics).
//!
//! Groups are taken in id order. The levels propose a candidate predecessor; a group
//! whose candidate is its current predecessor is kept as it is. Otherwise the
//! candidate, or failing it the candidate's own new predecessor and so on up the new
//! tree, becomes the base if it is usable and its keys are a subset of the group's;
//! with no such base the group becomes a full snapshot (a forced snapshot).

use std::rc::Rc;

use crate::error::Result;
use crate::hash::FxHashMap;
use crate::levels::Levels;
use crate::model::GroupId;
use crate::state::State;

/// Why a group is left exactly as it is and never used as a base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Pending deletion or being persisted by Synapse.
    Frozen,
    /// Its stored state is not well defined (cycle, several predecessors, a predecessor
    /// with a higher id, conflicting duplicate rows, or such a group up its chain).
    Broken(String),
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

/// Plan one chunk. `outside` gives the node of a group below the chunk as the new
/// tree stands (from earlier chunks or the database).
pub fn plan_chunk(
    inputs: &[Input],
    levels: &mut Levels,
    outside: &mut dyn FnMut(GroupId) -> Result<Rc<Node>>,
) -> Result<ChunkPlan> {
    let mut nodes: FxHashMap<GroupId, Rc<Node>> = FxHashMap::default();
    let mut planned = Vec::with_capacity(inputs.len());
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
            let mut base = candidate;
            let mut base_node = None;
            while let Some(b) = base {
                let n = node_of(b)?;
                if n.usable && n.state.keys_subset_of(state) {
                    base_node = Some(n);
                    break;
                }
                base = n.prev;
            }
            let delta = match &base_node {
                Some(n) => state.delta_from(&n.state),
                None => (**state).clone(),
            };
            let depth = base_node.as_ref().map_or(0, |n| n.depth + 1);
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
