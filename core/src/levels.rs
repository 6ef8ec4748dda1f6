//! The levels of the existing tool (rust-synapse-compress-state), kept compatible so
//! that its saved progress (`state_compressor_state`) can be adopted as it is.
//!
//! Levels are numbered from the finest (level 1, the longest chains). Walking groups in
//! id order, a group's new predecessor is the head of the lowest level with room; each
//! full level below that restarts at the group; when every level is full the group
//! becomes a full snapshot. A chain therefore never exceeds the sum of the sizes.

use crate::error::{Error, Result};
use crate::model::GroupId;

/// Most levels accepted, and largest size of one level. Far beyond any sensible
/// setting; they keep a typo like `1000000` from building unreadable chains.
pub const MAX_LEVELS: usize = 10;
pub const MAX_LEVEL_SIZE: u32 = 10_000;

/// Parsed, validated level sizes, finest first (e.g. `100,50,25`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelSpec(Vec<u32>);

impl LevelSpec {
    pub fn parse(text: &str) -> Result<LevelSpec> {
        let bad = |why: String| Err(Error::InvalidLevels(why));
        if text.trim().is_empty() {
            return bad("the list is empty".into());
        }
        let mut sizes = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let size: i64 = match part.parse() {
                Ok(n) => n,
                Err(_) => return bad(format!("{part:?} is not a whole number")),
            };
            if size < 1 || size > MAX_LEVEL_SIZE as i64 {
                return bad(format!("size {size} is outside 1..{MAX_LEVEL_SIZE}"));
            }
            sizes.push(size as u32);
        }
        if sizes.len() > MAX_LEVELS {
            return bad(format!(
                "{} levels given, at most {MAX_LEVELS} allowed",
                sizes.len()
            ));
        }
        Ok(LevelSpec(sizes))
    }

    pub fn sizes(&self) -> &[u32] {
        &self.0
    }

    /// The longest chain (in hops) a tree built with these levels can have.
    pub fn max_hops(&self) -> u32 {
        self.0.iter().sum()
    }
}

impl std::fmt::Display for LevelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// One level: the head of its current chain and how long that chain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub max_size: u32,
    pub current_length: u32,
    pub head: Option<GroupId>,
}

/// The planner's position in a room; saved between runs and restored to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Levels {
    levels: Vec<Level>,
}

impl Levels {
    pub fn new(spec: &LevelSpec) -> Levels {
        let levels = spec
            .sizes()
            .iter()
            .map(|&max_size| Level {
                max_size,
                current_length: 0,
                head: None,
            })
            .collect();
        Levels { levels }
    }

    /// Continue from saved levels (as stored by this extension or the existing tool).
    pub fn restore(levels: Vec<Level>) -> Result<Levels> {
        if levels.is_empty() || levels.len() > MAX_LEVELS {
            return Err(Error::InvalidLevels(format!(
                "{} saved levels",
                levels.len()
            )));
        }
        for l in &levels {
            if l.max_size < 1 || l.max_size > MAX_LEVEL_SIZE || l.current_length > l.max_size {
                return Err(Error::InvalidLevels(format!(
                    "saved level {l:?} is inconsistent"
                )));
            }
        }
        // A level with no head has no chain, whatever length was saved (hand-edited
        // progress): `place` and `depth_budget` rely on it.
        let levels = levels
            .into_iter()
            .map(|l| Level {
                current_length: if l.head.is_some() {
                    l.current_length
                } else {
                    0
                },
                ..l
            })
            .collect();
        Ok(Levels { levels })
    }

    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    pub fn spec(&self) -> LevelSpec {
        LevelSpec(self.levels.iter().map(|l| l.max_size).collect())
    }

    /// Place `group` (the next group in id order) and return the candidate predecessor
    /// chosen by the levels (`None`: a full snapshot).
    ///
    /// One departure from the existing tool: a group placed with no predecessor also
    /// starts the chains of the empty levels above it, as the top level's restart does.
    /// The tool leaves them empty, so the first group each level above the first gets
    /// is one more full snapshot (groups 101 and 5101 of every room with the default
    /// levels). Here group 101 is a delta on the room's first group, which also holds
    /// the first place of every level's chain: the levels above the first restart
    /// 100 groups earlier than the tool's (level 2 at 5001, a delta on the first
    /// group; the top level at 125001, not 130101), within the same bound on depth.
    pub fn place(&mut self, group: GroupId) -> Option<GroupId> {
        for i in 0..self.levels.len() {
            let level = &mut self.levels[i];
            if level.current_length < level.max_size {
                let prev = level.head;
                level.head = Some(group);
                level.current_length += 1;
                if prev.is_none() {
                    for up in self.levels[i + 1..].iter_mut().filter(|l| l.head.is_none()) {
                        up.head = Some(group);
                        up.current_length = 1;
                    }
                }
                return prev;
            }
            // Full: this level restarts at `group`, which also goes one level up.
            level.head = Some(group);
            level.current_length = 1;
        }
        None
    }

    pub fn heads(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.levels.iter().filter_map(|l| l.head)
    }

    /// The depth (hops) the level structure gives the group `place` just placed: the
    /// sum over the levels of their chain lengths less one (at most the sizes' sum
    /// less their count). With fresh levels, the level choice puts every group at
    /// exactly this depth; and any group at most this deep keeps every later group the
    /// levels place on it within the sum of the sizes. The planner lets a group take
    /// another base only within this depth.
    pub fn depth_budget(&self) -> u32 {
        self.levels
            .iter()
            .map(|l| l.current_length.saturating_sub(1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            LevelSpec::parse("100,50,25").unwrap().sizes(),
            &[100, 50, 25]
        );
        assert_eq!(LevelSpec::parse(" 3 , 2 ").unwrap().sizes(), &[3, 2]);
        for bad in [
            "",
            " ",
            "0",
            "-1",
            "a,b",
            "100,,25",
            "1.5",
            "99999999999999999999",
            "10001",
        ] {
            assert!(LevelSpec::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(LevelSpec::parse(&["2"; 11].join(",")).is_err());
    }

    #[test]
    fn places_like_the_existing_tool_but_for_its_second_root() {
        // L2 <---------- L2 <-------- ...
        // ^-- L1 <- L1 <- L1  ^-- L1 <- L1 <- L1   (L1 size 3, L2 size 2)
        // The tool makes group 4 a root too (its L2 chain starts empty); here group 1
        // starts both chains, and group 4 is a delta on it.
        let mut levels = Levels::new(&LevelSpec::parse("3,2").unwrap());
        let prevs: Vec<Option<GroupId>> = (1..=13).map(|g| levels.place(g)).collect();
        assert_eq!(
            prevs,
            vec![
                None,
                Some(1),
                Some(2),
                Some(1),
                Some(4),
                Some(5),
                None,
                Some(7),
                Some(8),
                Some(7),
                Some(10),
                Some(11),
                None
            ]
        );
    }

    #[test]
    fn a_saved_level_without_a_head_has_no_chain() {
        let lv = |current_length, head| Level {
            max_size: 3,
            current_length,
            head,
        };
        let mut levels = Levels::restore(vec![lv(2, None), lv(1, Some(1))]).unwrap();
        assert_eq!(levels.place(10), None);
        assert_eq!(levels.depth_budget(), 0);
        assert_eq!(levels.place(11), Some(10));
        assert_eq!(levels.depth_budget(), 1);
    }

    #[test]
    fn chains_stay_within_the_sum_of_sizes() {
        let spec = LevelSpec::parse("5,4,3").unwrap();
        let mut levels = Levels::new(&spec);
        let mut depth = std::collections::HashMap::new();
        for g in 1..2000i64 {
            let d = match levels.place(g) {
                None => 0,
                Some(p) => depth[&p] + 1,
            };
            assert!(d <= spec.max_hops());
            assert_eq!(d, levels.depth_budget(), "group {g}");
            depth.insert(g, d);
        }
    }
}
