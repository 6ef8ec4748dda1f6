//! The raw shape of Synapse's state tables, as read from (or written to) the database.
//!
//! These types carry strings exactly as stored; the engine interns them on load
//! (see `state`) so that a chunk's working set stays small.

/// A state group id (`state_groups.id`, from `state_group_id_seq`).
pub type GroupId = i64;

/// One row of `state_groups_state`, minus the group id and room id.
///
/// Its three texts share one allocation (a chunk holds its rows until they are
/// interned, and three `String`s cost 72 bytes of headers and two more allocations a
/// row). Ordered as the tuple `(event_type, state_key, event_id)`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StateRow {
    /// Type, state key and event id, one after the other.
    text: Box<str>,
    type_len: u32,
    key_len: u32,
}

impl StateRow {
    pub fn new(event_type: &str, state_key: &str, event_id: &str) -> Self {
        let mut text = String::with_capacity(event_type.len() + state_key.len() + event_id.len());
        text.push_str(event_type);
        text.push_str(state_key);
        text.push_str(event_id);
        StateRow {
            text: text.into_boxed_str(),
            type_len: u32::try_from(event_type.len()).expect("a type shorter than 4 GB"),
            key_len: u32::try_from(state_key.len()).expect("a state key shorter than 4 GB"),
        }
    }

    pub fn event_type(&self) -> &str {
        &self.text[..self.type_len as usize]
    }

    pub fn state_key(&self) -> &str {
        &self.text[self.type_len as usize..(self.type_len + self.key_len) as usize]
    }

    pub fn event_id(&self) -> &str {
        &self.text[(self.type_len + self.key_len) as usize..]
    }

    /// Bytes of the three texts together (the one allocation's size).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The same row naming another event.
    pub fn with_event(&self, event_id: &str) -> StateRow {
        StateRow::new(self.event_type(), self.state_key(), event_id)
    }

    fn parts(&self) -> (&str, &str, &str) {
        (self.event_type(), self.state_key(), self.event_id())
    }
}

impl Ord for StateRow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl PartialOrd for StateRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for StateRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRow")
            .field("event_type", &self.event_type())
            .field("state_key", &self.state_key())
            .field("event_id", &self.event_id())
            .finish()
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

#[cfg(test)]
mod tests {
    use super::StateRow;

    #[test]
    fn a_row_keeps_its_three_texts_apart() {
        let (a, b) = (
            StateRow::new("a", "bc", "$x"),
            StateRow::new("ab", "c", "$x"),
        );
        assert_eq!(
            (a.event_type(), a.state_key(), a.event_id()),
            ("a", "bc", "$x")
        );
        assert_ne!(a, b, "same text, other boundaries");
        // Ordered as the tuple, not as the joined text.
        assert!(a < b);
        assert!(StateRow::new("t", "", "$2") > StateRow::new("t", "", "$1"));
        let empty = StateRow::new("", "", "");
        assert_eq!(
            (empty.event_type(), empty.state_key(), empty.event_id()),
            ("", "", "")
        );
        assert_eq!(a.with_event("$y").event_id(), "$y");
        assert_eq!(a.with_event("$y").state_key(), "bc");
        let hostile = StateRow::new("é🚀", "'; --\t\n", "$e");
        assert_eq!(hostile.state_key(), "'; --\t\n");
        assert_eq!(
            format!("{a:?}"),
            r#"StateRow { event_type: "a", state_key: "bc", event_id: "$x" }"#
        );
    }
}
