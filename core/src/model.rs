//! The raw shape of Synapse's state tables, as read from (or written to) the database.
//!
//! These types carry strings exactly as stored; the engine interns them on load
//! (see `state`) so that a chunk's working set stays small.

/// A state group id (`state_groups.id`, from `state_group_id_seq`).
pub type GroupId = i64;

/// One row of `state_groups_state`, minus the group id and room id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateRow {
    pub event_type: String,
    pub state_key: String,
    pub event_id: String,
}

impl StateRow {
    pub fn new(event_type: &str, state_key: &str, event_id: &str) -> Self {
        StateRow {
            event_type: event_type.to_owned(),
            state_key: state_key.to_owned(),
            event_id: event_id.to_owned(),
        }
    }
}

/// One state group as stored: its `state_group_edges` predecessors (normally zero or
/// one; more is corrupt data that must be reported, not trusted) and its delta rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawGroup {
    pub id: GroupId,
    /// `state_groups.room_id`; `None` when the id has edges or rows but no
    /// `state_groups` row (a purged group).
    pub room_id: Option<String>,
    pub prevs: Vec<GroupId>,
    pub rows: Vec<StateRow>,
}
