//! `plan_room` and `plan_room_json`: what `compress_room` would do to a room, group by
//! group, before it does it. The same dry run as `compress_room(..., dry_run => true)`
//! (same load path, no row locks, same planner), recording each group's plan.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Serialize;
use synapse_compress_core::engine::{self, GroupPlan, Summary};
use synapse_compress_core::{Error, LevelSpec};

use crate::api::room_options;
use crate::errors::{clean, or_default, raise, required};
use crate::gucs;
use crate::owner::{Access, StateTables};
use crate::spi::store::SpiStore;

/// Check the arguments and plan the room, as the state tables' owner, writing nothing.
fn plan(
    room: Option<&str>,
    levels: Option<&str>,
    after_group: Option<i64>,
    max_groups: Option<i64>,
) -> (String, Summary, Vec<GroupPlan>) {
    let room = required(room, "room_id");
    let levels_text = match levels {
        Some(l) => l.to_string(),
        None => gucs::text(&gucs::LEVELS),
    };
    let levels = LevelSpec::parse(&levels_text).unwrap_or_else(|e| raise(e));
    let after_group = or_default(after_group, "after_group");
    let max_groups = or_default(max_groups, "max_groups");
    let opts = room_options(room, levels, true, Some(after_group), Some(max_groups));
    crate::schedule::forget_run_caches();
    let (summary, plans) = clean(|| {
        Spi::connect_mut(|client| {
            let tables = StateTables::resolve(client, Access::Read)?;
            tables.owner().run(|| {
                // No locks: a dry run's store reads as a plain SELECT does.
                let mut store = SpiStore::new(client, &tables, false)
                    .map_err(|e| Error::Store(e.to_string()))?;
                engine::plan_room(&mut store, room, opts)
            })
        })
    })
    .unwrap_or_else(|e| raise(e));
    (levels_text, summary, plans)
}

/// One row per group of what compress_room would do; see the COMMENT.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn plan_room(
    room_id: Option<&str>,
    levels: default!(Option<&str>, "NULL"),
    after_group: default!(Option<i64>, 0),
    // The plan's rows are held in memory until returned: a bound by default.
    max_groups: default!(Option<i64>, 10000),
) -> TableIterator<
    'static,
    (
        name!(state_group, i64),
        name!(old_prev, Option<i64>),
        name!(new_prev, Option<i64>),
        name!(rows_before, i64),
        name!(rows_after, i64),
        name!(depth, Option<i32>),
        name!(action, String),
        name!(reason, String),
    ),
> {
    let (_, _, plans) = plan(room_id, levels, after_group, max_groups);
    TableIterator::new(plans.into_iter().map(|p| {
        (
            p.group,
            p.old_prev,
            p.new_prev,
            p.rows_before as i64,
            p.rows_after as i64,
            p.depth.map(|d| d as i32),
            p.action.name().to_string(),
            p.reason(),
        )
    }))
}

/// The JSON form of a plan: the room's tree after it, for drawing.
#[derive(Serialize)]
struct Tree {
    room_id: String,
    levels: String,
    state_groups: u64,
    rows_before: u64,
    rows_after: u64,
    max_depth: u32,
    nodes: Vec<TreeNode>,
}

#[derive(Serialize)]
struct TreeNode {
    id: i64,
    /// The predecessor after the plan.
    prev: Option<i64>,
    old_prev: Option<i64>,
    depth: Option<u32>,
    /// Rows after the plan.
    rows: u64,
    rows_before: u64,
    action: &'static str,
}

/// `plan_room` as one jsonb document: the room's tree after the plan; see the COMMENT.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn plan_room_json(
    room_id: Option<&str>,
    levels: default!(Option<&str>, "NULL"),
    after_group: default!(Option<i64>, 0),
    max_groups: default!(Option<i64>, 10000),
) -> JsonB {
    let (levels, summary, plans) = plan(room_id, levels, after_group, max_groups);
    let tree = Tree {
        room_id: summary.room_id,
        levels,
        state_groups: summary.state_groups,
        rows_before: summary.rows_before,
        rows_after: summary.rows_after,
        max_depth: summary.max_chain_after,
        nodes: plans
            .into_iter()
            .map(|p| TreeNode {
                id: p.group,
                prev: p.new_prev,
                old_prev: p.old_prev,
                depth: p.depth,
                rows: p.rows_after,
                rows_before: p.rows_before,
                action: p.action.name(),
            })
            .collect(),
    };
    JsonB(serde_json::to_value(tree).unwrap_or_else(|e| raise(Error::Store(e.to_string()))))
}
