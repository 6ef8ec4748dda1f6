//! A deterministic (by seed) generator of Synapse-shaped state data, for tests and
//! benchmarks.
//!
//! Rooms are written the way Synapse writes them:
//!
//! - Group ids come from one counter shared by all rooms (it stands for
//!   `state_group_id_seq`), so with several rooms their groups interleave in id order.
//!   Each next group belongs to a random room, weighted by the groups that room still
//!   has to write (a uniform shuffle of all the rooms' groups).
//! - A room's first group is a full snapshot: the creation state (`m.room.create`,
//!   power levels, join rules, history visibility, the creator's membership), or, for a
//!   room joined over federation, the whole remote state at the join.
//! - Every later group is the state after one state event (a join, leave, kick or ban,
//!   a profile change, topic, name, avatar, power levels, custom state...), except
//!   merges (state resolution of several branches, created for the event that points at
//!   them all).
//! - Synapse's storage rule: a group whose predecessor's chain (in groups, predecessor
//!   included) is shorter than [`SYNAPSE_MAX_DELTA_HOPS`] is stored as a delta (one
//!   edge, only the changed keys); otherwise as a full snapshot (no edge, every key).
//!   A merge is a delta only on a parent whose key set is a subset of the merged state
//!   (Synapse has no tombstones), picking the one with the smallest delta.
//! - Keys are never removed from a branch's state: a leave overwrites the member's key.
//!
//! [`generate`] streams: only each room's live branch states sit in memory, never the
//! rows already written.

use crate::rng::{mix64, Rng, GOLDEN};
use synapse_compress_core::{GroupId, RawGroup, StateRow};

/// Synapse's `MAX_STATE_DELTA_HOPS`: a new group is a delta only while its
/// predecessor's chain is shorter than this.
pub const SYNAPSE_MAX_DELTA_HOPS: u32 = 100;

/// How a room's history branches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Each group follows the previous one.
    Linear,
    /// Federation forks merged back later, and now and then a spam-join burst.
    Forks,
    /// Linear, plus backfilled roots now and then.
    Backfill,
    /// Any mix, by per-event probabilities.
    Mixed(ShapeMix),
}

/// Per-event probabilities of the branching events (the rest are plain state events
/// on a branch head).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShapeMix {
    /// Open a federation fork: a side branch off the current head, which grows a few
    /// groups (typically remote users joining) and is then merged back into the main
    /// branch by state resolution, which may reject some of its joins.
    pub fork: f64,
    /// A spam-join burst: many one-join groups on the same predecessor, then a merge of
    /// them all, then moderators banning most of the spammers over the next events.
    pub spam: f64,
    /// A backfilled root: a snapshot with no predecessor and a late id, holding an
    /// older, smaller state (a subset of the keys, some with other event ids), followed
    /// by a few deltas on it, never merged back.
    pub backfill: f64,
}

impl Shape {
    pub fn mix(&self) -> ShapeMix {
        match *self {
            Shape::Linear => ShapeMix::default(),
            Shape::Forks => ShapeMix {
                fork: 0.03,
                spam: 0.004,
                backfill: 0.0,
            },
            Shape::Backfill => ShapeMix {
                fork: 0.0,
                spam: 0.0,
                backfill: 0.01,
            },
            Shape::Mixed(m) => m,
        }
    }
}

/// One room to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomSpec {
    pub room_id: String,
    /// For the `rooms` table only (e.g. "10", "12").
    pub room_version: String,
    /// Exactly this many groups are written for the room.
    pub groups: usize,
    pub shape: Shape,
    /// Members in the room's first snapshot: 1 for a room created on this server (its
    /// creator), more for a room joined over federation (the remote state at the join:
    /// mostly joined, some left or banned).
    pub initial_members: usize,
    /// Per state event on the main branch: probability that a never-seen user joins
    /// (a new key). This is what makes the state, hence the snapshots, grow.
    pub new_member_rate: f64,
    /// Per state event: probability that a member leaves (or is kicked or banned).
    /// Former members rejoin at half that rate, so joins outnumber leaves while
    /// `new_member_rate > leave_rate / 2`.
    pub leave_rate: f64,
}

impl RoomSpec {
    /// A room created on this server, with default churn.
    pub fn new(room_id: impl Into<String>, groups: usize, shape: Shape) -> Self {
        RoomSpec {
            room_id: room_id.into(),
            room_version: "10".to_owned(),
            groups,
            shape,
            initial_members: 1,
            new_member_rate: 0.1,
            leave_rate: 0.05,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenSpec {
    pub seed: u64,
    /// The first id the shared counter hands out.
    pub first_id: GroupId,
    /// Per group: probability that the counter skips 1-5 ids first (rolled-back
    /// transactions, purged groups).
    pub id_gaps: f64,
    pub rooms: Vec<RoomSpec>,
}

/// Why a group was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// The room's first group: its creation state, or the remote state at a join.
    Create,
    /// One state event on a branch head (its predecessor).
    Event,
    /// One spam join on the burst's shared predecessor.
    SpamJoin,
    /// State resolution of these branch heads (two for a federation fork, the whole
    /// burst for spam joins). Its predecessor, if any, is one of them.
    Merge { parents: Vec<GroupId> },
    /// A backfilled root: a snapshot with no predecessor holding an older state.
    BackfillRoot,
}

/// One generated state group, in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedGroup {
    /// The group as stored: `room_id` is always `Some`, `prevs` has at most one id,
    /// `rows` are the delta rows (or every row of a snapshot).
    pub group: RawGroup,
    /// The event that created the group: `state_groups.event_id`, and the one
    /// `event_to_state_groups` row pointing at it.
    pub event_id: String,
    pub kind: GroupKind,
}

/// Per room totals, and what the `rooms` table needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomSummary {
    pub room_id: String,
    pub room_version: String,
    /// The creator's user id (`None` for a room with no groups).
    pub creator: Option<String>,
    pub groups: u64,
    pub rows: u64,
}

/// Totals over everything generated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    pub rooms: Vec<RoomSummary>,
    pub groups: u64,
    pub snapshots: u64,
    pub edges: u64,
    pub rows: u64,
    pub min_id: Option<GroupId>,
    pub max_id: Option<GroupId>,
}

/// Generate `spec`, handing each group to `emit` in id order. Returns the totals.
pub fn generate(spec: &GenSpec, emit: &mut dyn FnMut(GeneratedGroup)) -> GenSummary {
    generate_inner(spec, emit, None)
}

/// Names accepted by [`preset`].
pub const PRESETS: &[&str] = &[
    "headline",
    "bigstate",
    "manyrooms",
    "forks",
    "spamjoin",
    "small",
    "random",
];

/// A preset by name (see [`PRESETS`]); `scale` multiplies its size (ignored by
/// `random`, which draws everything from `seed`).
pub fn preset(name: &str, scale: f64, seed: u64) -> Option<GenSpec> {
    Some(match name {
        "headline" => headline(scale, seed),
        "bigstate" => bigstate(scale, seed),
        "manyrooms" => manyrooms(scale, seed),
        "forks" => forks(scale, seed),
        "spamjoin" => spamjoin(scale, seed),
        "small" => small(scale, seed),
        "random" => random(seed),
        _ => return None,
    })
}

/// A database of one room, ids from 1 without gaps.
fn one_room(seed: u64, room: RoomSpec) -> GenSpec {
    GenSpec {
        seed,
        first_id: 1,
        id_gaps: 0.0,
        rooms: vec![room],
    }
}

fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale).round() as usize).max(1)
}

/// One big room like the existing compressor's README headline (73,904 groups,
/// 2,240,043 rows at scale 1): a long, mostly linear history whose member list grows
/// steadily, with a few forks. At smaller scales the room starts from a bigger remote
/// state so that rows per group stay about the same (about 30).
pub fn headline(scale: f64, seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x4845_4144);
    let groups = scaled(73_904, scale);
    let new_member_rate = 0.062;
    // Keys added per group on average: new members, plus custom state and the joins
    // that forks and spam bring in (measured).
    let key_growth = new_member_rate + 0.0135;
    // Mean state size over the room's life (keys), tuned so rows land near 2.2 M.
    let mean_keys = 2_810.0;
    let initial = (mean_keys - key_growth * groups as f64 / 2.0).max(1.0) as usize;
    one_room(
        seed,
        RoomSpec {
            room_id: random_room_id(&mut rng, false),
            room_version: "10".to_owned(),
            groups,
            shape: Shape::Mixed(ShapeMix {
                fork: 0.002,
                spam: 0.0002,
                backfill: 0.0001,
            }),
            initial_members: initial,
            new_member_rate,
            leave_rate: 0.06,
        },
    )
}

/// One room joined over federation whose state reaches about 50,000 members, with a
/// few thousand groups (each snapshot is ~50,000 rows).
pub fn bigstate(scale: f64, seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x4249_4753);
    one_room(
        seed,
        RoomSpec {
            room_id: random_room_id(&mut rng, false),
            room_version: "9".to_owned(),
            groups: scaled(3_000, scale),
            shape: Shape::Mixed(ShapeMix {
                fork: 0.003,
                spam: 0.0,
                backfill: 0.0,
            }),
            initial_members: scaled(48_000, scale),
            new_member_rate: 0.6,
            leave_rate: 0.2,
        },
    )
}

/// About 2,000 rooms of 50-500 groups each, interleaved; mostly linear, some forked,
/// some backfilled, some joined over federation, a fifth with version-12 room ids.
pub fn manyrooms(scale: f64, seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x4d41_4e59);
    let rooms = (0..scaled(2_000, scale))
        .map(|_| {
            let r = rng.f64();
            let shape = if r < 0.6 {
                Shape::Linear
            } else if r < 0.75 {
                Shape::Forks
            } else if r < 0.85 {
                Shape::Backfill
            } else {
                Shape::Mixed(ShapeMix {
                    fork: 0.01,
                    spam: 0.002,
                    backfill: 0.003,
                })
            };
            let new_member_rate = 0.05 + 0.25 * rng.f64();
            let groups = 50 + rng.below(451) as usize;
            random_room(&mut rng, groups, shape, new_member_rate)
        })
        .collect();
    GenSpec {
        seed,
        first_id: 1,
        id_gaps: 0.001,
        rooms,
    }
}

/// Heavy branching: federation forks and merges (some rejecting joins, so merges fall
/// back to snapshots), spam-join bursts and bans, backfilled roots. 8 rooms of about
/// 1,000-5,000 groups at scale 1.
pub fn forks(scale: f64, seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x464f_524b);
    let rooms = (0..8)
        .map(|_| {
            let groups = scaled(1_000 + rng.below(4_001) as usize, scale);
            let shape = Shape::Mixed(ShapeMix {
                fork: 0.04 + 0.04 * rng.f64(),
                spam: 0.005 + 0.01 * rng.f64(),
                backfill: 0.004 + 0.006 * rng.f64(),
            });
            let new_member_rate = 0.1 + 0.2 * rng.f64();
            random_room(&mut rng, groups, shape, new_member_rate)
        })
        .collect();
    GenSpec {
        seed,
        first_id: 1,
        id_gaps: 0.01,
        rooms,
    }
}

/// A public room under a spam-join attack: bursts of up to 50 joins on one predecessor
/// (a group each, then a merge of them all), moderators banning most of them, with
/// federation forks beside; the member list reaches thousands. One room of about
/// 20,000 groups at scale 1.
pub fn spamjoin(scale: f64, seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x5350_414d);
    one_room(
        seed,
        RoomSpec {
            room_id: random_room_id(&mut rng, false),
            room_version: "10".to_owned(),
            groups: scaled(20_000, scale),
            shape: Shape::Mixed(ShapeMix {
                fork: 0.02,
                spam: 0.02,
                backfill: 0.001,
            }),
            initial_members: scaled(600, scale),
            new_member_rate: 0.2,
            leave_rate: 0.05,
        },
    )
}

/// A few rooms of every shape, a few hundred groups in all: quick tests.
pub fn small(scale: f64, seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x534d_414c);
    let heavy = Shape::Mixed(ShapeMix {
        fork: 0.08,
        spam: 0.02,
        backfill: 0.03,
    });
    // (groups, shape, initial members, new member rate, v12 room id)
    let plan: [(usize, Shape, usize, f64, bool); 8] = [
        (120, Shape::Linear, 1, 0.2, false),
        (150, heavy, 1, 0.2, false),
        (100, Shape::Backfill, 30, 0.1, true),
        (80, Shape::Forks, 10, 0.15, false),
        (40, heavy, 200, 0.05, true),
        (3, Shape::Linear, 1, 0.5, false),
        (1, Shape::Linear, 1, 0.1, false),
        (60, Shape::Linear, 2, 0.0, false),
    ];
    let rooms = plan
        .iter()
        .map(
            |&(groups, shape, initial_members, new_member_rate, v12)| RoomSpec {
                room_id: random_room_id(&mut rng, v12),
                room_version: if v12 { "12" } else { "10" }.to_owned(),
                groups: scaled(groups, scale),
                shape,
                initial_members,
                new_member_rate,
                leave_rate: if new_member_rate == 0.0 {
                    0.2
                } else {
                    new_member_rate * 0.6
                },
            },
        )
        .collect();
    GenSpec {
        seed,
        first_id: 1,
        id_gaps: 0.02,
        rooms,
    }
}

/// For property tests: 1-4 rooms of 1-400 groups, a random shape mix each, sometimes
/// tiny member lists, sometimes a large first id and gaps in the ids.
pub fn random(seed: u64) -> GenSpec {
    let mut rng = Rng::derive(seed, 0x5241_4e44);
    let n = 1 + rng.below(4) as usize;
    let rooms = (0..n)
        .map(|_| {
            let groups = 1 + rng.below(400) as usize;
            let shape = match rng.below(5) {
                0 => Shape::Linear,
                1 => Shape::Forks,
                2 => Shape::Backfill,
                3 => Shape::Mixed(ShapeMix {
                    fork: 0.1 * rng.f64(),
                    spam: 0.03 * rng.f64(),
                    backfill: 0.03 * rng.f64(),
                }),
                _ => Shape::Mixed(ShapeMix {
                    fork: 0.2,
                    spam: 0.05,
                    backfill: 0.05,
                }),
            };
            let tiny = rng.chance(0.3);
            let initial_members = if tiny || rng.chance(0.5) {
                1 + rng.below(3) as usize
            } else {
                1 + rng.below(80) as usize
            };
            let new_member_rate = if tiny {
                0.02 * rng.f64()
            } else {
                0.4 * rng.f64()
            };
            let v12 = rng.chance(0.3);
            RoomSpec {
                room_id: random_room_id(&mut rng, v12),
                room_version: if v12 { "12" } else { "10" }.to_owned(),
                groups,
                shape,
                initial_members,
                new_member_rate,
                leave_rate: 0.3 * rng.f64(),
            }
        })
        .collect();
    let first_id = if rng.chance(0.5) {
        1
    } else {
        1 + rng.below(10_000_000) as GroupId
    };
    let id_gaps = if rng.chance(0.3) { 0.05 } else { 0.0 };
    GenSpec {
        seed,
        first_id,
        id_gaps,
        rooms,
    }
}

fn random_room(rng: &mut Rng, groups: usize, shape: Shape, new_member_rate: f64) -> RoomSpec {
    let v12 = rng.chance(0.2);
    let room_version = if v12 {
        "12"
    } else {
        ["10", "10", "9", "6", "5", "1"][rng.index(6)]
    };
    let initial_members = if rng.chance(0.3) {
        10 + rng.below(300) as usize
    } else {
        1
    };
    RoomSpec {
        room_id: random_room_id(rng, v12),
        room_version: room_version.to_owned(),
        groups,
        shape,
        initial_members,
        new_member_rate,
        leave_rate: new_member_rate * (0.3 + 0.8 * rng.f64()),
    }
}

/// `!` + 18 random letters + `:example.org`, or for `v12` (room version 12, no server
/// part) `!` + 43 url-safe base64 characters.
pub fn random_room_id(rng: &mut Rng, v12: bool) -> String {
    if v12 {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let mut s = String::with_capacity(44);
        s.push('!');
        b64url(&bytes, &mut s);
        s
    } else {
        const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut s = String::with_capacity(31);
        s.push('!');
        for _ in 0..18 {
            s.push(LETTERS[rng.index(LETTERS.len())] as char);
        }
        s.push_str(":example.org");
        s
    }
}

/// Appends `s` escaped for PostgreSQL's COPY text format (tab-delimited): backslash,
/// tab, newline, carriage return and the other C escapes become backslash sequences.
/// (PostgreSQL text cannot hold NUL; a NUL is passed through and PostgreSQL rejects it.)
pub fn copy_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------
// Internals.

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded url-safe base64 of 32 bytes: 43 characters.
fn b64url(bytes: &[u8; 32], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(URL_SAFE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
}

/// `$` + 43 url-safe base64 characters, a bijective function of (`seed`, `n`), so
/// every event number gets its own id.
fn event_id(seed: u64, n: u64) -> String {
    let base = mix64(seed ^ 0x6576_656e_7473) ^ n.wrapping_mul(GOLDEN);
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let v = mix64(base.wrapping_add((i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)));
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    let mut s = String::with_capacity(44);
    s.push('$');
    b64url(&bytes, &mut s);
    s
}

/// The generator's integer-keyed maps: FxHash is deterministic (std's default hasher is
/// randomly seeded, and slow); the generator sorts whatever it iterates, so its output
/// does not depend on iteration order either way.
type IntMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// (type, state_key) as two indices into the room's string table, packed.
type Key = u64;

fn key(ty: u32, sk: u32) -> Key {
    (u64::from(ty) << 32) | u64::from(sk)
}
fn ty_of(k: Key) -> u32 {
    (k >> 32) as u32
}
fn sk_of(k: Key) -> u32 {
    k as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Membership {
    NotMember,
    Join,
    Leave,
    Ban,
}

/// A state entry: the event number (its id is `event_id(seed, ev)`) and, for
/// `m.room.member`, the membership it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Val {
    ev: u64,
    m: Membership,
}

type StateMap = IntMap<Key, Val>;

/// The room's string table starts with these types, then "" (so their indices are
/// constants).
const TYPES: &[&str] = &[
    "m.room.create",
    "m.room.member",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.pinned_events",
    "m.room.guest_access",
    "m.room.server_acl",
    "m.room.encryption",
    "m.space.child",
    "im.vector.modular.widgets",
    "org.example.custom.state",
];
const T_CREATE: u32 = 0;
const T_MEMBER: u32 = 1;
const T_POWER: u32 = 2;
const T_JOIN_RULES: u32 = 3;
const T_HISTORY: u32 = 4;
const T_NAME: u32 = 5;
const T_TOPIC: u32 = 6;
const T_AVATAR: u32 = 7;
const T_ALIAS: u32 = 8;
const T_PINNED: u32 = 9;
const T_GUEST: u32 = 10;
const T_ACL: u32 = 11;
const T_ENCRYPTION: u32 = 12;
const T_SPACE_CHILD: u32 = 13;
const T_WIDGETS: u32 = 14;
const T_CUSTOM: u32 = 15;
const EMPTY: u32 = TYPES.len() as u32;

/// Room-wide state events with an empty state key, with weights.
const MISC: &[(u32, u32)] = &[
    (T_TOPIC, 35),
    (T_POWER, 25),
    (T_NAME, 8),
    (T_AVATAR, 8),
    (T_PINNED, 8),
    (T_ALIAS, 5),
    (T_JOIN_RULES, 4),
    (T_ACL, 3),
    (T_HISTORY, 2),
    (T_GUEST, 2),
];
const MISC_RATE: f64 = 0.06;
const CUSTOM_RATE: f64 = 0.03;
const CUSTOM_TYPES: [u32; 3] = [T_SPACE_CHILD, T_WIDGETS, T_CUSTOM];

/// State keys of `org.example.custom.state`, used first: every character COPY must
/// escape, and a few that look like COPY syntax.
const HOSTILE: &[&str] = &[
    "tab\there\nnewline\\backslash\rcr",
    "\\N",
    "\\.",
    "",
    "back\\slash",
    "line\nbreak",
    "cr\r\nlf",
    "\u{8}\u{b}\u{c} controls \u{1} \u{7f}",
    "quote' \"double\" ;semi,comma|pipe",
    "ünïcødé ✓ 🎉 中文",
    " leading and trailing ",
    "\t",
];

/// Live side branches per room (federation forks and backfilled roots) at most.
const MAX_SIDE_BRANCHES: usize = 3;
/// Probability, at a merge, that state resolution rejects a join present only on the
/// side branch (or only on the main branch).
const REJECT_SIDE_ONLY: f64 = 0.15;
const REJECT_MAIN_ONLY: f64 = 0.04;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BranchKind {
    Main,
    /// A federation fork with `life` more events before it is merged.
    Fork {
        life: u32,
    },
    /// A backfilled root's branch with `life` more events before it is abandoned.
    Backfill {
        life: u32,
    },
}

#[derive(Clone)]
struct Branch {
    kind: BranchKind,
    head: GroupId,
    /// Chain length of `head`.
    chain: u32,
    state: StateMap,
    /// Users (string indices) currently joined, with their positions for O(1) removal.
    joined: Vec<u32>,
    joined_pos: IntMap<u32, u32>,
    /// Users who left and may rejoin.
    left: Vec<u32>,
    /// Spammers the moderators will ban.
    to_ban: Vec<u32>,
}

impl Branch {
    fn new(kind: BranchKind, head: GroupId, chain: u32, state: StateMap) -> Self {
        let mut b = Branch {
            kind,
            head,
            chain,
            state,
            joined: Vec::new(),
            joined_pos: IntMap::default(),
            left: Vec::new(),
            to_ban: Vec::new(),
        };
        b.rebuild_members();
        b
    }

    /// Recomputes the membership lists from the state (in key order, so the result
    /// does not depend on hash-map iteration order).
    fn rebuild_members(&mut self) {
        let mut members: Vec<(Key, Membership)> = self
            .state
            .iter()
            .filter(|(k, _)| ty_of(**k) == T_MEMBER)
            .map(|(k, v)| (*k, v.m))
            .collect();
        members.sort_unstable_by_key(|e| e.0);
        self.joined.clear();
        self.joined_pos.clear();
        self.left.clear();
        for (k, m) in members {
            match m {
                Membership::Join => self.add_joined(sk_of(k)),
                Membership::Leave => self.left.push(sk_of(k)),
                _ => {}
            }
        }
        let joined = &self.joined_pos;
        self.to_ban.retain(|u| joined.contains_key(u));
    }

    fn add_joined(&mut self, u: u32) {
        if !self.joined_pos.contains_key(&u) {
            self.joined_pos.insert(u, self.joined.len() as u32);
            self.joined.push(u);
        }
    }

    fn remove_joined(&mut self, u: u32) -> bool {
        match self.joined_pos.remove(&u) {
            Some(pos) => {
                let pos = pos as usize;
                self.joined.swap_remove(pos);
                if let Some(&moved) = self.joined.get(pos) {
                    self.joined_pos.insert(moved, pos as u32);
                }
                true
            }
            None => false,
        }
    }

    fn entries_sorted(&self) -> Vec<(Key, Val)> {
        sorted_entries(&self.state)
    }
}

fn sorted_entries(state: &StateMap) -> Vec<(Key, Val)> {
    let mut v: Vec<(Key, Val)> = state.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort_unstable_by_key(|e| e.0);
    v
}

/// Entries of `new` that differ from `old` (sorted by key).
fn diff(new: &StateMap, old: &StateMap) -> Vec<(Key, Val)> {
    let mut d: Vec<(Key, Val)> = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    d.sort_unstable_by_key(|e| e.0);
    d
}

struct Spam {
    base: GroupId,
    base_chain: u32,
    /// Joins still to write.
    todo: usize,
    /// (key, value, group, chain) of each spam join written.
    joins: Vec<(Key, Val, GroupId, u32)>,
}

/// The state of the group being stored: `base` overlaid with `overlay`; its delta
/// rows if stored as a delta on `prev` = (id, chain length).
struct NewGroup<'s> {
    base: &'s StateMap,
    overlay: &'s [(Key, Val)],
    delta: &'s [(Key, Val)],
    prev: Option<(GroupId, u32)>,
    event: u64,
    kind: GroupKind,
}

/// What the generator meant a group's resolved state to be (for tests).
#[cfg_attr(not(test), allow(dead_code))]
struct Intended<'s> {
    room: usize,
    id: GroupId,
    /// The predecessor Synapse would have used if the chain allowed a delta.
    candidate: Option<GroupId>,
    /// The full state, as (type, state_key) string indices into `strings` and values.
    entries: Vec<(Key, Val)>,
    strings: &'s [String],
}

type Hook<'a> = Option<&'a mut dyn FnMut(Intended<'_>)>;

struct Gen<'a> {
    seed: u64,
    next_id: GroupId,
    id_gaps: f64,
    id_rng: Rng,
    next_event: u64,
    emit: &'a mut dyn FnMut(GeneratedGroup),
    hook: Hook<'a>,
    summary: GenSummary,
}

impl Gen<'_> {
    fn event(&mut self) -> u64 {
        self.next_event += 1;
        self.next_event
    }

    fn alloc_id(&mut self) -> GroupId {
        if self.id_gaps > 0.0 && self.id_rng.chance(self.id_gaps) {
            self.next_id += self.id_rng.range(1, 5) as GroupId;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn row(&self, strings: &[String], k: Key, v: Val) -> StateRow {
        StateRow::new(
            &strings[ty_of(k) as usize],
            &strings[sk_of(k) as usize],
            &event_id(self.seed, v.ev),
        )
    }

    /// Writes one group by Synapse's rule; returns (id, chain length).
    fn store(&mut self, room: usize, strings: &[String], g: NewGroup) -> (GroupId, u32) {
        let id = self.alloc_id();
        let full = || {
            let mut v: Vec<(Key, Val)> = g
                .base
                .iter()
                .filter(|(k, _)| !g.overlay.iter().any(|(o, _)| o == *k))
                .map(|(k, v)| (*k, *v))
                .chain(g.overlay.iter().copied())
                .collect();
            v.sort_unstable_by_key(|e| e.0);
            v
        };
        let (prevs, entries, chain) = match g.prev {
            Some((p, c)) if c < SYNAPSE_MAX_DELTA_HOPS => {
                debug_assert!(!g.delta.is_empty());
                (vec![p], g.delta.to_vec(), c + 1)
            }
            _ => (Vec::new(), full(), 1),
        };
        let rows: Vec<StateRow> = entries
            .iter()
            .map(|&(k, v)| self.row(strings, k, v))
            .collect();
        let s = &mut self.summary;
        s.groups += 1;
        s.rows += rows.len() as u64;
        s.edges += prevs.len() as u64;
        if prevs.is_empty() {
            s.snapshots += 1;
        }
        s.min_id = Some(s.min_id.map_or(id, |m| m.min(id)));
        s.max_id = Some(s.max_id.map_or(id, |m| m.max(id)));
        let rs = &mut s.rooms[room];
        rs.groups += 1;
        rs.rows += rows.len() as u64;
        let room_id = rs.room_id.clone();
        if let Some(hook) = self.hook.as_mut() {
            hook(Intended {
                room,
                id,
                candidate: g.prev.map(|p| p.0),
                entries: full(),
                strings,
            });
        }
        (self.emit)(GeneratedGroup {
            group: RawGroup {
                id,
                room_id: Some(room_id),
                prevs,
                rows,
            },
            event_id: event_id(self.seed, g.event),
            kind: g.kind,
        });
        (id, chain)
    }
}

struct Room {
    idx: usize,
    rng: Rng,
    spec_groups: usize,
    remaining: usize,
    initial_members: usize,
    new_rate: f64,
    leave_rate: f64,
    mix: ShapeMix,
    strings: Vec<String>,
    users: u32,
    user_base: u32,
    user_stride: u32,
    creator: u32,
    /// `branches[0]` is the main branch once the room exists.
    branches: Vec<Branch>,
    spam: Option<Spam>,
    /// Custom state keys created so far (on any branch).
    custom: Vec<Key>,
    custom_counts: [usize; 3],
}

impl Room {
    fn new(idx: usize, seed: u64, spec: &RoomSpec) -> Self {
        let mut rng = Rng::derive(seed, idx as u64);
        let user_base = rng.below(1 << 24) as u32;
        let user_stride = (rng.below(1 << 23) as u32) * 2 + 1;
        Room {
            idx,
            rng,
            spec_groups: spec.groups,
            remaining: spec.groups,
            initial_members: spec.initial_members.max(1),
            new_rate: spec.new_member_rate,
            leave_rate: spec.leave_rate,
            mix: spec.shape.mix(),
            strings: Vec::new(),
            users: 0,
            user_base,
            user_stride,
            creator: 0,
            branches: Vec::new(),
            spam: None,
            custom: Vec::new(),
            custom_counts: [0; 3],
        }
    }

    fn intern(&mut self, s: String) -> u32 {
        self.strings.push(s);
        (self.strings.len() - 1) as u32
    }

    /// A never-seen user of this room (ids are distinct within a room, and overlap
    /// between rooms like real users do).
    fn new_user(&mut self, spam: bool) -> u32 {
        let i = self.users;
        self.users += 1;
        let g = self
            .user_base
            .wrapping_add(i.wrapping_mul(self.user_stride))
            & 0xFF_FFFF;
        let s = if spam {
            format!("@spam{g}:evil{}.example.net", 1 + mix64(u64::from(g)) % 3)
        } else {
            format!("@user{g}:hs{}.example.org", 1 + mix64(u64::from(g)) % 4)
        };
        self.intern(s)
    }

    fn step(&mut self, g: &mut Gen) {
        let left = self.remaining;
        debug_assert!(left > 0);
        self.remaining -= 1;
        if self.branches.is_empty() {
            self.create(g);
        } else if self.spam.is_some() {
            self.spam_step(g);
        } else {
            let m = self.mix;
            let r = self.rng.f64();
            let sides_full = self.branches.len() > MAX_SIDE_BRANCHES;
            if r < m.spam && left >= 3 {
                self.start_spam(g, left);
            } else if (m.spam..m.spam + m.backfill).contains(&r) && !sides_full {
                self.backfill_root(g);
            } else {
                let fork_from = m.spam + m.backfill;
                if (fork_from..fork_from + m.fork).contains(&r) && !sides_full {
                    let mut fork = self.branches[0].clone();
                    fork.kind = BranchKind::Fork {
                        life: self.rng.range(1, 8) as u32,
                    };
                    fork.to_ban.clear();
                    self.branches.push(fork);
                }
                let bi = if self.branches.len() == 1 || self.rng.chance(0.55) {
                    0
                } else {
                    1 + self.rng.index(self.branches.len() - 1)
                };
                match self.branches[bi].kind {
                    BranchKind::Fork { life: 0 } => self.merge(g, bi),
                    BranchKind::Backfill { life: 0 } => {
                        // abandoned
                        self.branches.remove(bi);
                        self.event(g, 0);
                    }
                    _ => self.event(g, bi),
                }
            }
        }
        if self.remaining == 0 {
            // Free the room's memory: nothing more will be written for it.
            self.branches = Vec::new();
            self.strings = Vec::new();
            self.custom = Vec::new();
        }
    }

    fn create(&mut self, g: &mut Gen) {
        let mut strings: Vec<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
        strings.push(String::new());
        self.strings = strings;
        self.creator = self.new_user(false);
        let creator_id = self.strings[self.creator as usize].clone();
        g.summary.rooms[self.idx].creator = Some(creator_id);

        let mut state = StateMap::default();
        let mut last = 0;
        let mut put = |g: &mut Gen, k: Key, m: Membership| {
            last = g.event();
            state.insert(k, Val { ev: last, m });
        };
        put(g, key(T_CREATE, EMPTY), Membership::NotMember);
        put(g, key(T_MEMBER, self.creator), Membership::Join);
        put(g, key(T_POWER, EMPTY), Membership::NotMember);
        put(g, key(T_JOIN_RULES, EMPTY), Membership::NotMember);
        if self.rng.chance(0.3) {
            put(g, key(T_ENCRYPTION, EMPTY), Membership::NotMember);
        }
        if self.rng.chance(0.2) {
            put(g, key(T_GUEST, EMPTY), Membership::NotMember);
        }
        if self.idx.is_multiple_of(4) || self.rng.chance(0.1) {
            // A state key every COPY writer must escape.
            let k = self.custom_key(2);
            put(g, k, Membership::NotMember);
        }
        if self.initial_members > 1 {
            // Joined over federation: the remote state at our join.
            put(g, key(T_NAME, EMPTY), Membership::NotMember);
            put(g, key(T_TOPIC, EMPTY), Membership::NotMember);
            put(g, key(T_ALIAS, EMPTY), Membership::NotMember);
            for i in 1..self.initial_members {
                let u = self.new_user(false);
                let m = if i + 1 == self.initial_members {
                    Membership::Join // our own join, the event of this group
                } else {
                    match self.rng.below(20) {
                        0..=15 => Membership::Join,
                        16..=18 => Membership::Leave,
                        _ => Membership::Ban,
                    }
                };
                put(g, key(T_MEMBER, u), m);
            }
        } else {
            put(g, key(T_HISTORY, EMPTY), Membership::NotMember);
        }
        let (id, chain) = g.store(
            self.idx,
            &self.strings,
            NewGroup {
                base: &state,
                overlay: &[],
                delta: &[],
                prev: None,
                event: last,
                kind: GroupKind::Create,
            },
        );
        self.branches = vec![Branch::new(BranchKind::Main, id, chain, state)];
    }

    /// A new custom state key of `CUSTOM_TYPES[which]`.
    fn custom_key(&mut self, which: usize) -> Key {
        let n = self.custom_counts[which];
        self.custom_counts[which] += 1;
        let s = match which {
            0 => random_room_id(&mut self.rng, false),
            1 => format!("widget_{n}_{:08x}", self.rng.next_u64() as u32),
            _ => match HOSTILE.get(n) {
                Some(h) => (*h).to_owned(),
                None => format!("setting {n}"),
            },
        };
        let sk = self.intern(s);
        let k = key(CUSTOM_TYPES[which], sk);
        self.custom.push(k);
        k
    }

    /// Picks one state event for branch `bi` and updates its membership lists
    /// (not its state).
    fn choose_event(&mut self, bi: usize, ev: u64) -> (Key, Val) {
        let join = |u: u32| {
            (
                key(T_MEMBER, u),
                Val {
                    ev,
                    m: Membership::Join,
                },
            )
        };
        let side = self.branches[bi].kind != BranchKind::Main;
        if !self.branches[bi].to_ban.is_empty() && self.rng.chance(0.5) {
            let br = &mut self.branches[bi];
            let u = br.to_ban.pop().expect("non-empty");
            if !br.remove_joined(u) {
                br.left.retain(|&x| x != u);
            }
            return (
                key(T_MEMBER, u),
                Val {
                    ev,
                    m: Membership::Ban,
                },
            );
        }
        let p_new = if side {
            self.new_rate.max(0.35)
        } else {
            self.new_rate
        };
        let mut r = self.rng.f64();
        if r < p_new {
            let u = self.new_user(false);
            self.branches[bi].add_joined(u);
            return join(u);
        }
        r -= p_new;
        if r < self.leave_rate {
            let br = &mut self.branches[bi];
            if br.joined.len() > 1 {
                let u = br.joined[self.rng.index(br.joined.len())];
                br.remove_joined(u);
                // leave, kick (also a leave) or ban
                let m = if self.rng.chance(0.1) {
                    Membership::Ban
                } else {
                    br.left.push(u);
                    Membership::Leave
                };
                return (key(T_MEMBER, u), Val { ev, m });
            }
        }
        r -= self.leave_rate;
        if r < self.leave_rate * 0.5 {
            let br = &mut self.branches[bi];
            if !br.left.is_empty() {
                let u = br.left.swap_remove(self.rng.index(br.left.len()));
                br.add_joined(u);
                return join(u);
            }
        }
        r -= self.leave_rate * 0.5;
        if r < MISC_RATE {
            let total: u32 = MISC.iter().map(|m| m.1).sum();
            let mut x = self.rng.below(u64::from(total)) as u32;
            for &(ty, w) in MISC {
                if x < w {
                    return (
                        key(ty, EMPTY),
                        Val {
                            ev,
                            m: Membership::NotMember,
                        },
                    );
                }
                x -= w;
            }
        }
        r -= MISC_RATE;
        if r < CUSTOM_RATE {
            let k = if self.custom.is_empty() || self.rng.chance(0.3) {
                let which = self.rng.index(3);
                self.custom_key(which)
            } else {
                self.custom[self.rng.index(self.custom.len())]
            };
            return (
                k,
                Val {
                    ev,
                    m: Membership::NotMember,
                },
            );
        }
        // A profile change (a join over a join), or a join if nobody is left.
        let br = &self.branches[bi];
        if br.joined.is_empty() {
            let u = self.new_user(false);
            self.branches[bi].add_joined(u);
            join(u)
        } else {
            join(br.joined[self.rng.index(br.joined.len())])
        }
    }

    /// One state event on branch `bi`.
    fn event(&mut self, g: &mut Gen, bi: usize) {
        let ev = g.event();
        let kv = self.choose_event(bi, ev);
        let br = &self.branches[bi];
        let (id, chain) = g.store(
            self.idx,
            &self.strings,
            NewGroup {
                base: &br.state,
                overlay: &[kv],
                delta: &[kv],
                prev: Some((br.head, br.chain)),
                event: ev,
                kind: GroupKind::Event,
            },
        );
        let br = &mut self.branches[bi];
        br.state.insert(kv.0, kv.1);
        br.head = id;
        br.chain = chain;
        match &mut br.kind {
            BranchKind::Fork { life } | BranchKind::Backfill { life } => {
                *life = life.saturating_sub(1)
            }
            BranchKind::Main => {}
        }
    }

    /// State resolution of the main branch and fork `si`, written as one group that
    /// becomes the main head; the fork is gone.
    fn merge(&mut self, g: &mut Gen, si: usize) {
        let side = self.branches.remove(si);
        let main = &self.branches[0];
        let mut merged = main.state.clone();
        for (k, v) in side.entries_sorted() {
            match merged.get(&k) {
                Some(mv) if *mv == v => {}
                Some(_) => {
                    if self.rng.chance(0.5) {
                        merged.insert(k, v);
                    }
                }
                None => {
                    if !(ty_of(k) == T_MEMBER && self.rng.chance(REJECT_SIDE_ONLY)) {
                        merged.insert(k, v);
                    }
                }
            }
        }
        let mut main_only: Vec<Key> = main
            .state
            .keys()
            .filter(|k| ty_of(**k) == T_MEMBER && !side.state.contains_key(k))
            .copied()
            .collect();
        main_only.sort_unstable();
        for k in main_only {
            if sk_of(k) != self.creator && self.rng.chance(REJECT_MAIN_ONLY) {
                merged.remove(&k);
            }
        }
        // Synapse's choice of predecessor: a parent whose keys are all in the new
        // state, with the smallest delta.
        let cands = [
            (main.head, main.chain, &main.state),
            (side.head, side.chain, &side.state),
        ];
        let mut best: Option<(usize, Vec<(Key, Val)>)> = None;
        for (i, (_, _, st)) in cands.iter().enumerate() {
            if st.keys().all(|k| merged.contains_key(k)) {
                let d = diff(&merged, st);
                if best.as_ref().is_none_or(|b| d.len() < b.1.len()) {
                    best = Some((i, d));
                }
            }
        }
        let ev = g.event();
        if let Some((_, d)) = &mut best {
            if d.is_empty() {
                // Resolution gave back a parent's exact state (Synapse would reuse that
                // group): let the merging event be a power-levels change instead.
                let kv = (
                    key(T_POWER, EMPTY),
                    Val {
                        ev,
                        m: Membership::NotMember,
                    },
                );
                merged.insert(kv.0, kv.1);
                d.push(kv);
            }
        }
        let parents = vec![main.head, side.head];
        let (prev, delta) = match best {
            Some((i, d)) => (Some((cands[i].0, cands[i].1)), d),
            None => (None, Vec::new()),
        };
        let (id, chain) = g.store(
            self.idx,
            &self.strings,
            NewGroup {
                base: &merged,
                overlay: &[],
                delta: &delta,
                prev,
                event: ev,
                kind: GroupKind::Merge { parents },
            },
        );
        let main = &mut self.branches[0];
        main.state = merged;
        main.head = id;
        main.chain = chain;
        main.rebuild_members();
    }

    /// A backfilled root: an older, smaller copy of the main state, as a snapshot with
    /// no predecessor, plus a short branch of deltas on it later.
    fn backfill_root(&mut self, g: &mut Gen) {
        let drop_p = 0.05 + 0.35 * self.rng.f64();
        let mut state = StateMap::default();
        for (k, v) in self.branches[0].entries_sorted() {
            if ty_of(k) == T_MEMBER {
                if sk_of(k) != self.creator && self.rng.chance(drop_p) {
                    continue;
                }
                if self.rng.chance(0.1) {
                    // an older membership event of that user
                    state.insert(
                        k,
                        Val {
                            ev: g.event(),
                            m: v.m,
                        },
                    );
                    continue;
                }
            }
            state.insert(k, v);
        }
        let ev = g.event();
        let (id, chain) = g.store(
            self.idx,
            &self.strings,
            NewGroup {
                base: &state,
                overlay: &[],
                delta: &[],
                prev: None,
                event: ev,
                kind: GroupKind::BackfillRoot,
            },
        );
        let life = self.rng.below(13) as u32;
        self.branches
            .push(Branch::new(BranchKind::Backfill { life }, id, chain, state));
    }

    /// Starts a burst of `k` spam joins on the main head (`left` groups remain for the
    /// room, this one included: the burst and its merge must fit).
    fn start_spam(&mut self, g: &mut Gen, left: usize) {
        let k = self.rng.range(2, (left - 1).min(50) as u64) as usize;
        let main = &self.branches[0];
        self.spam = Some(Spam {
            base: main.head,
            base_chain: main.chain,
            todo: k,
            joins: Vec::with_capacity(k),
        });
        self.spam_step(g);
    }

    fn spam_step(&mut self, g: &mut Gen) {
        let todo = self.spam.as_ref().expect("spam burst").todo;
        if todo > 0 {
            let u = self.new_user(true);
            let ev = g.event();
            let kv = (
                key(T_MEMBER, u),
                Val {
                    ev,
                    m: Membership::Join,
                },
            );
            let sp = self.spam.as_mut().expect("spam burst");
            sp.todo -= 1;
            let (id, chain) = g.store(
                self.idx,
                &self.strings,
                NewGroup {
                    base: &self.branches[0].state,
                    overlay: &[kv],
                    delta: &[kv],
                    prev: Some((sp.base, sp.base_chain)),
                    event: ev,
                    kind: GroupKind::SpamJoin,
                },
            );
            sp.joins.push((kv.0, kv.1, id, chain));
            return;
        }
        // The event after the burst points at every spam join: resolution keeps them
        // all; the smallest delta is on the first spam join's group.
        let sp = self.spam.take().expect("spam burst");
        let ev = g.event();
        let main = &mut self.branches[0];
        let delta: Vec<(Key, Val)> = sp.joins[1..].iter().map(|j| (j.0, j.1)).collect();
        for j in &sp.joins {
            main.state.insert(j.0, j.1);
        }
        let (id, chain) = g.store(
            self.idx,
            &self.strings,
            NewGroup {
                base: &main.state,
                overlay: &[],
                delta: &delta,
                prev: Some((sp.joins[0].2, sp.joins[0].3)),
                event: ev,
                kind: GroupKind::Merge {
                    parents: sp.joins.iter().map(|j| j.2).collect(),
                },
            },
        );
        main.head = id;
        main.chain = chain;
        for j in &sp.joins {
            let u = sk_of(j.0);
            main.add_joined(u);
            if self.rng.chance(0.8) {
                main.to_ban.push(u);
            }
        }
        // Moderators ban the most recent spammers first (to_ban is popped).
        main.to_ban.reverse();
    }
}

fn generate_inner<'a>(
    spec: &GenSpec,
    emit: &'a mut dyn FnMut(GeneratedGroup),
    hook: Hook<'a>,
) -> GenSummary {
    let mut rooms: Vec<Room> = spec
        .rooms
        .iter()
        .enumerate()
        .map(|(i, r)| Room::new(i, spec.seed, r))
        .collect();
    let mut schedule: Vec<u32> = Vec::with_capacity(spec.rooms.iter().map(|r| r.groups).sum());
    for (i, r) in spec.rooms.iter().enumerate() {
        schedule.extend(std::iter::repeat_n(i as u32, r.groups));
    }
    // Picking a room weighted by its remaining groups, again and again, is a uniform
    // shuffle of all the rooms' groups.
    Rng::derive(spec.seed, u64::MAX).shuffle(&mut schedule);
    let mut g = Gen {
        seed: spec.seed,
        next_id: spec.first_id,
        id_gaps: spec.id_gaps,
        id_rng: Rng::derive(spec.seed, u64::MAX - 1),
        next_event: 0,
        emit,
        hook,
        summary: GenSummary {
            rooms: spec
                .rooms
                .iter()
                .map(|r| RoomSummary {
                    room_id: r.room_id.clone(),
                    room_version: r.room_version.clone(),
                    ..RoomSummary::default()
                })
                .collect(),
            ..GenSummary::default()
        },
    };
    for r in schedule {
        rooms[r as usize].step(&mut g);
    }
    debug_assert!(rooms
        .iter()
        .all(|r| r.remaining == 0 && g.summary.rooms[r.idx].groups == r.spec_groups as u64));
    g.summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};
    use std::rc::Rc;

    /// A resolved state in the checker's own string ids: (type, state_key) packed →
    /// (the group whose row won, event id).
    type Resolved = IntMap<u64, (GroupId, u32)>;

    fn pack(a: u32, b: u32) -> u64 {
        (u64::from(a) << 32) | u64::from(b)
    }

    /// The intended state of the group about to be emitted, in the checker's ids.
    struct Pending {
        id: GroupId,
        candidate: Option<GroupId>,
        want: IntMap<u64, u32>,
    }

    /// Checks every group as it is emitted against the generator's intent and Synapse's
    /// rules, and counts the shapes seen. Works on interned strings of its own,
    /// translating the generator's indices through the strings themselves.
    #[derive(Default)]
    struct Checker {
        seed: u64,
        strings: HashMap<String, u32>,
        room_strings: Vec<Vec<u32>>,
        event_numbers: IntMap<u64, u32>,
        groups: Vec<GeneratedGroup>,
        resolved: IntMap<GroupId, Rc<Resolved>>,
        chain: IntMap<GroupId, u32>,
        pending: Option<Pending>,
        event_ids: HashSet<String>,
        per_room: HashMap<String, u64>,
        merges: usize,
        merges_with_different_parent_keys: usize,
        merges_with_non_subset_parent: usize,
        merge_snapshots: usize,
        forced_snapshots: usize,
        backfill_roots: usize,
        spam_joins: usize,
    }

    fn intern(strings: &mut HashMap<String, u32>, s: &str) -> u32 {
        if let Some(&i) = strings.get(s) {
            return i;
        }
        let i = strings.len() as u32;
        strings.insert(s.to_owned(), i);
        i
    }

    impl Checker {
        fn new(spec: &GenSpec) -> Self {
            Checker {
                seed: spec.seed,
                room_strings: vec![Vec::new(); spec.rooms.len()],
                ..Checker::default()
            }
        }

        /// The hook: translate the intended state into the checker's ids.
        fn intend(&mut self, i: Intended<'_>) {
            assert!(self.pending.is_none());
            let table = &mut self.room_strings[i.room];
            let mut tr = |idx: u32| {
                while table.len() <= idx as usize {
                    table.push(intern(&mut self.strings, &i.strings[table.len()]));
                }
                table[idx as usize]
            };
            let mut state = IntMap::default();
            let mut evs = Vec::with_capacity(i.entries.len());
            for &(k, v) in &i.entries {
                evs.push((pack(tr(ty_of(k)), tr(sk_of(k))), v.ev));
            }
            for (k, ev) in evs {
                let e = match self.event_numbers.get(&ev) {
                    Some(&e) => e,
                    None => {
                        let e = intern(&mut self.strings, &event_id(self.seed, ev));
                        self.event_numbers.insert(ev, e);
                        e
                    }
                };
                assert!(
                    state.insert(k, e).is_none(),
                    "intended state has a key twice"
                );
            }
            self.pending = Some(Pending {
                id: i.id,
                candidate: i.candidate,
                want: state,
            });
        }

        fn keys_subset(a: &Resolved, b: &IntMap<u64, u32>) -> bool {
            a.keys().all(|k| b.contains_key(k))
        }

        fn check(&mut self, g: GeneratedGroup) {
            let Pending {
                id: intended_id,
                candidate,
                want,
            } = self.pending.take().expect("hook called before emit");
            let id = g.group.id;
            assert_eq!(intended_id, id);
            if let Some(last) = self.groups.last() {
                assert!(
                    id > last.group.id,
                    "ids must increase: {id} after {}",
                    last.group.id
                );
            }
            let room = g.group.room_id.clone().expect("room id");
            *self.per_room.entry(room.clone()).or_default() += 1;
            assert!(g.group.prevs.len() <= 1);
            assert!(!g.group.rows.is_empty(), "group {id} has no rows");
            assert_event_id(&g.event_id);
            assert!(
                self.event_ids.insert(g.event_id.clone()),
                "event id reused: {}",
                g.event_id
            );

            // Synapse's delta/snapshot rule.
            let chain = match g.group.prevs.first() {
                Some(&p) => {
                    assert!(p < id, "predecessor {p} of {id} is not lower");
                    assert!(
                        self.resolved.contains_key(&p),
                        "predecessor {p} not emitted"
                    );
                    assert_eq!(candidate, Some(p));
                    let pc = self.chain[&p];
                    assert!(pc < SYNAPSE_MAX_DELTA_HOPS, "delta on a chain of {pc}");
                    pc + 1
                }
                None => {
                    if let Some(c) = candidate {
                        assert!(
                            self.chain[&c] >= SYNAPSE_MAX_DELTA_HOPS,
                            "{id} is a snapshot though {c} has a short chain"
                        );
                        self.forced_snapshots += 1;
                    }
                    1
                }
            };

            // Resolve as Synapse reads it: the rows of the whole predecessor chain, the
            // highest group id winning per (type, state_key). The predecessor's
            // resolved state already is that for the rest of the chain (its ids are all
            // lower, checked above as each was emitted).
            let mut resolved: Resolved = match g.group.prevs.first() {
                Some(p) => {
                    let prev = &self.resolved[p];
                    assert!(Self::keys_subset(prev, &want), "{id} drops keys of {p}");
                    (**prev).clone()
                }
                None => IntMap::default(),
            };
            let mut seen = HashSet::new();
            for r in &g.group.rows {
                assert_event_id(r.event_id());
                let k = pack(
                    intern(&mut self.strings, r.event_type()),
                    intern(&mut self.strings, r.state_key()),
                );
                assert!(seen.insert(k), "duplicate key in {id}");
                let ev = intern(&mut self.strings, r.event_id());
                let e = resolved.entry(k).or_insert((id, ev));
                if id >= e.0 {
                    *e = (id, ev);
                }
            }
            assert_eq!(
                resolved.len(),
                want.len(),
                "group {id}: resolved state size"
            );
            for (k, (_, ev)) in &resolved {
                assert_eq!(want.get(k), Some(ev), "group {id}: resolved state differs");
            }
            let create = pack(self.strings["m.room.create"], self.strings[""]);
            assert!(resolved.contains_key(&create));

            match &g.kind {
                GroupKind::Create => {
                    assert!(g.group.prevs.is_empty() && candidate.is_none());
                    assert_eq!(self.per_room[&room], 1, "Create is the room's first group");
                }
                GroupKind::BackfillRoot => {
                    assert!(g.group.prevs.is_empty() && candidate.is_none());
                    assert!(self.per_room[&room] > 1);
                    self.backfill_roots += 1;
                }
                GroupKind::Event => assert!(candidate.is_some()),
                GroupKind::SpamJoin => {
                    let c = candidate.expect("spam joins have a candidate");
                    assert_eq!(want.len(), self.resolved[&c].len() + 1);
                    self.spam_joins += 1;
                }
                GroupKind::Merge { parents } => {
                    let subset: Vec<bool> = parents
                        .iter()
                        .map(|p| Self::keys_subset(&self.resolved[p], &want))
                        .collect();
                    match candidate {
                        Some(c) => {
                            let i = parents.iter().position(|p| *p == c).expect("a parent");
                            assert!(subset[i], "merge {id} on a parent that is no subset");
                        }
                        None => {
                            assert!(subset.iter().all(|s| !s), "merge {id} could be a delta");
                            self.merge_snapshots += 1;
                        }
                    }
                    let differ = parents.windows(2).any(|w| {
                        let (a, b) = (&self.resolved[&w[0]], &self.resolved[&w[1]]);
                        a.len() != b.len() || a.keys().any(|k| !b.contains_key(k))
                    });
                    self.merges += 1;
                    self.merges_with_different_parent_keys += usize::from(differ);
                    self.merges_with_non_subset_parent += usize::from(subset.contains(&false));
                }
            }
            self.chain.insert(id, chain);
            self.resolved.insert(id, Rc::new(resolved));
            self.groups.push(g);
        }

        fn children(&self) -> HashMap<GroupId, usize> {
            let mut c = HashMap::new();
            for g in &self.groups {
                for p in &g.group.prevs {
                    *c.entry(*p).or_default() += 1;
                }
            }
            c
        }
    }

    fn assert_event_id(e: &str) {
        assert_eq!(e.len(), 44, "{e}");
        assert!(e.starts_with('$'), "{e}");
        assert!(e[1..].bytes().all(|b| URL_SAFE.contains(&b)), "{e}");
    }

    fn check_spec(spec: &GenSpec) -> Checker {
        let checker = RefCell::new(Checker::new(spec));
        let summary = generate_inner(
            spec,
            &mut |g| checker.borrow_mut().check(g),
            Some(&mut |i| checker.borrow_mut().intend(i)),
        );
        let c = checker.into_inner();
        assert_eq!(summary.groups as usize, c.groups.len());
        assert_eq!(
            summary.rows as usize,
            c.groups.iter().map(|g| g.group.rows.len()).sum::<usize>()
        );
        assert_eq!(
            summary.edges as usize,
            c.groups.iter().map(|g| g.group.prevs.len()).sum::<usize>()
        );
        if let Some(first) = c.groups.first() {
            assert!(first.group.id >= spec.first_id);
            assert_eq!(summary.min_id, Some(first.group.id));
            assert_eq!(summary.max_id, c.groups.last().map(|g| g.group.id));
        }
        if spec.id_gaps == 0.0 && !c.groups.is_empty() {
            assert_eq!(
                summary.max_id.unwrap() - spec.first_id + 1,
                summary.groups as i64
            );
        }
        for (r, rs) in spec.rooms.iter().zip(&summary.rooms) {
            assert_eq!(
                c.per_room.get(&r.room_id).copied().unwrap_or(0),
                r.groups as u64
            );
            assert_eq!(rs.groups, r.groups as u64);
            assert_eq!(rs.creator.is_some(), r.groups > 0);
        }
        c
    }

    fn collect(spec: &GenSpec) -> (Vec<GeneratedGroup>, GenSummary) {
        let mut v = Vec::new();
        let s = generate(spec, &mut |g| v.push(g));
        (v, s)
    }

    #[test]
    fn generator_is_deterministic_by_seed() {
        let (a, sa) = collect(&small(1.0, 5));
        let (b, sb) = collect(&small(1.0, 5));
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        let (c, _) = collect(&small(1.0, 6));
        assert_ne!(a, c);
        assert_ne!(a[0].event_id, c[0].event_id);
        assert_eq!(collect(&random(11)).0, collect(&random(11)).0);
        assert_ne!(random(11), random(12));
        // The first id only shifts ids.
        let mut spec = small(1.0, 5);
        spec.first_id = 1_000_000;
        let (d, _) = collect(&spec);
        assert_eq!(a.len(), d.len());
        for (x, y) in a.iter().zip(&d) {
            assert_eq!(x.group.id + 999_999, y.group.id);
            assert_eq!(x.group.rows, y.group.rows);
            assert_eq!(x.event_id, y.event_id);
        }
    }

    #[test]
    fn generator_small_preset_obeys_synapse_rules() {
        let spec = small(1.0, 1);
        let c = check_spec(&spec);
        assert!(c.groups.len() > 300 && c.groups.len() < 1_000);
        assert!(c.merges > 0 && c.backfill_roots > 0 && c.spam_joins > 0);
        // Hostile state keys are there for COPY writers to get wrong.
        assert!(c.groups.iter().any(|g| g
            .group
            .rows
            .iter()
            .any(|r| r.state_key().contains('\t') && r.state_key().contains('\n'))));
        // Version-12 room ids have no server part.
        assert!(spec
            .rooms
            .iter()
            .any(|r| !r.room_id.contains(':') && r.room_id.len() == 44));
        assert!(spec
            .rooms
            .iter()
            .any(|r| r.room_id.len() == 31 && r.room_id.ends_with(":example.org")));
    }

    #[test]
    fn generator_random_presets_obey_synapse_rules() {
        for seed in 0..25 {
            check_spec(&random(seed));
        }
    }

    #[test]
    fn generator_scaled_down_presets_obey_synapse_rules() {
        let c = check_spec(&manyrooms(0.01, 3));
        assert_eq!(c.per_room.len(), 20);
        // Rooms interleave in id order.
        let switches = c
            .groups
            .windows(2)
            .filter(|w| w[0].group.room_id != w[1].group.room_id)
            .count();
        assert!(switches > c.groups.len() / 2, "{switches}");
        let c = check_spec(&bigstate(0.02, 3));
        assert!(c.groups[0].group.rows.len() >= 960);
        check_spec(&headline(0.003, 3));
    }

    #[test]
    fn generator_forks_preset_really_branches() {
        let c = check_spec(&forks(0.12, 2));
        let children = c.children();
        let forked = children.values().filter(|&&n| n >= 2).count();
        let max_children = children.values().copied().max().unwrap_or(0);
        assert!(forked > 50, "{forked} groups with several children");
        assert!(
            max_children >= 10,
            "spam bursts: max {max_children} children"
        );
        assert!(c.merges > 20, "{} merges", c.merges);
        assert!(c.merges_with_different_parent_keys > 10);
        assert!(c.merges_with_non_subset_parent > 2);
        assert!(c.merge_snapshots > 0);
        assert!(c.backfill_roots > 3);
        assert!(c.spam_joins > 50);
        assert!(c.forced_snapshots > 0);
    }

    #[test]
    fn generator_headline_rows_per_group() {
        let spec = headline(0.05, 1);
        let mut max_rows = 0;
        let s = generate(&spec, &mut |g| max_rows = max_rows.max(g.group.rows.len()));
        assert_eq!(s.groups, 3_695);
        let ratio = s.rows as f64 / s.groups as f64;
        let headline_ratio = 2_240_043.0 / 73_904.0;
        assert!((ratio / headline_ratio - 1.0).abs() < 0.15, "{ratio}");
        // About one snapshot per 100 groups.
        assert!((35..=45).contains(&s.snapshots), "{}", s.snapshots);
        assert!(max_rows > 2_000);
    }

    #[test]
    fn generator_id_gaps_and_first_id() {
        let mut spec = small(1.0, 9);
        spec.first_id = 42;
        spec.id_gaps = 0.3;
        let c = check_spec(&spec);
        assert_eq!(c.groups[0].group.id, 42 + (c.groups[0].group.id - 42));
        assert!(c.groups[0].group.id >= 42);
        let gaps = c
            .groups
            .windows(2)
            .filter(|w| w[1].group.id > w[0].group.id + 1)
            .count();
        assert!(gaps > 50, "{gaps}");
    }

    /// PostgreSQL's COPY text-format field decoding.
    fn copy_unescape(s: &str) -> String {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'\\' || i + 1 == b.len() {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let c = b[i + 1];
            i += 2;
            match c {
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(11),
                b'0'..=b'7' => {
                    let mut v = u32::from(c - b'0');
                    for _ in 0..2 {
                        if i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                            v = v * 8 + u32::from(b[i] - b'0');
                            i += 1;
                        }
                    }
                    out.push(v as u8);
                }
                b'x' => panic!("no hex escapes expected"),
                other => out.push(other),
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn generator_copy_escape_round_trips() {
        let mut hostile: Vec<String> = HOSTILE.iter().map(|s| (*s).to_owned()).collect();
        hostile.extend(
            [
                "\\",
                "\\\\",
                "\\t",
                "a\\nb",
                "\n",
                "\r",
                "\r\n",
                "\\.",
                "\\N",
                "N",
                "end\\",
                "\u{8}\u{c}\u{b}",
                "tab\tsep",
                "😀\t😀",
                "\\x41",
                "\\101",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        let mut line = String::new();
        for (i, h) in hostile.iter().enumerate() {
            if i > 0 {
                line.push('\t');
            }
            let mut e = String::new();
            copy_escape(h, &mut e);
            assert!(!e.contains(['\t', '\n', '\r']), "{e:?}");
            assert_ne!(e, "\\N");
            assert_ne!(e, "\\.");
            assert_eq!(&copy_unescape(&e), h);
            line.push_str(&e);
        }
        let fields: Vec<String> = line.split('\t').map(copy_unescape).collect();
        assert_eq!(fields, hostile);
    }

    /// Text heavy in what COPY's text format treats specially.
    fn copy_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let special = prop::sample::select(vec![
            '\\', '\t', '\n', '\r', '\u{8}', '\u{b}', '\u{c}', '\u{0}', '\u{7f}', 'N', '.', 'x',
            '0', '7', 'b', 'n',
        ]);
        prop::collection::vec(prop_oneof![special, any::<char>()], 0..24)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 4000,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x434f_5059),
            ..proptest::test_runner::Config::default()
        })]

        /// Any field escaped decodes back to itself, has no raw delimiter (tab, newline,
        /// carriage return) and is never COPY's NULL (`\N`) or end marker (`\.`); a
        /// line of escaped fields splits back into the fields.
        #[test]
        fn copy_escape_round_trips_any_text(
            fields in proptest::collection::vec(copy_text(), 1..5)
        ) {
            let mut line = String::new();
            for (i, f) in fields.iter().enumerate() {
                let mut e = String::new();
                copy_escape(f, &mut e);
                proptest::prop_assert!(!e.contains(['\t', '\n', '\r']), "{:?}", e);
                proptest::prop_assert!(e != "\\N" && e != "\\.", "{:?}", e);
                proptest::prop_assert_eq!(&copy_unescape(&e), f);
                if i > 0 {
                    line.push('\t');
                }
                line.push_str(&e);
            }
            let back: Vec<String> = line.split('\t').map(copy_unescape).collect();
            proptest::prop_assert_eq!(back, fields);
        }
    }

    #[test]
    fn generator_ids_and_names_look_like_synapse() {
        let mut rng = Rng::new(1);
        let r = random_room_id(&mut rng, false);
        assert!(
            r.starts_with('!') && r.ends_with(":example.org") && r.len() == 31,
            "{r}"
        );
        assert!(r[1..19].bytes().all(|b| b.is_ascii_alphabetic()));
        let r12 = random_room_id(&mut rng, true);
        assert!(
            r12.starts_with('!') && r12.len() == 44 && !r12.contains(':'),
            "{r12}"
        );
        assert_event_id(&event_id(1, 0));
        assert_ne!(event_id(1, 0), event_id(1, 1));
        assert_ne!(event_id(1, 0), event_id(2, 0));
        let (groups, summary) = collect(&small(1.0, 3));
        let users: Vec<&StateRow> = groups
            .iter()
            .flat_map(|g| &g.group.rows)
            .filter(|r| r.event_type() == "m.room.member")
            .collect();
        assert!(users
            .iter()
            .all(|r| r.state_key().starts_with('@') && r.state_key().contains(':')));
        assert!(users
            .iter()
            .any(|r| r.state_key().ends_with(":hs1.example.org")));
        assert!(users
            .iter()
            .any(|r| r.state_key().ends_with(":hs2.example.org")));
        assert!(summary
            .rooms
            .iter()
            .all(|r| r.creator.as_deref().is_some_and(|c| c.starts_with("@user"))));
        for name in PRESETS {
            assert!(preset(name, 0.001, 1).is_some());
        }
        assert!(preset("nope", 1.0, 1).is_none());
    }
}
