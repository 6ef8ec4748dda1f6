//! `plan_room`: the dry run, group by group.

mod common;
use common::*;

use synapse_compress_core::engine::{self, PlanAction};
use synapse_compress_testkit::generator;

/// The plan agrees with the dry run (and the real run) row for row, writes nothing,
/// and names every group of the room once, in id order.
#[test]
fn plan_sums_to_the_dry_run_and_the_real_run() {
    let spec = generator::preset("forks", 0.05, 7).expect("preset");
    let (base, rooms) = load_spec(&spec);
    for room in rooms.iter().take(3) {
        let mut s = base.clone();
        // A frozen group: skipped, its rows kept.
        let frozen = *s
            .tables
            .groups
            .iter()
            .filter(|(_, r)| *r == room)
            .map(|(id, _)| id)
            .nth(5)
            .expect("room has groups");
        s.tables.pending_deletion.insert(frozen);
        let before = s.clone();
        let (sum, plan) = engine::plan_room(&mut s, room, opts("100,50,25", 37)).unwrap();
        assert_eq!(s.tables, before.tables, "plan_room wrote");
        let mut dry_opts = opts("100,50,25", 37);
        dry_opts.dry_run = true;
        let dry = compress(&mut s, room, dry_opts);
        assert_eq!(plan.len() as u64, dry.state_groups);
        assert!(plan.windows(2).all(|w| w[0].group < w[1].group));
        let after: u64 = plan.iter().map(|p| p.rows_after).sum();
        let before_rows: u64 = plan.iter().map(|p| p.rows_before).sum();
        assert_eq!((after, before_rows), (dry.rows_after, dry.rows_before));
        assert_eq!(sum.rows_after, dry.rows_after);
        let changed = plan
            .iter()
            .filter(|p| matches!(p.action, PlanAction::Rewritten { .. }))
            .count() as u64;
        assert_eq!(changed, dry.groups_changed);
        let skipped: Vec<_> = plan
            .iter()
            .filter(|p| matches!(p.action, PlanAction::Skipped(_)))
            .collect();
        assert_eq!(skipped.len() as u64, dry.groups_skipped);
        assert!(skipped
            .iter()
            .any(|p| p.group == frozen && p.depth.is_none()));
        for p in &plan {
            assert!(!p.reason().is_empty());
            match p.action {
                PlanAction::Kept | PlanAction::Skipped(_) => {
                    assert_eq!((p.old_prev, p.rows_after), (p.new_prev, p.rows_before))
                }
                PlanAction::Rewritten { .. } => {
                    assert!(p.depth.is_some_and(|d| d <= 175), "{p:?}")
                }
            }
        }
        // The real run removes the rows the plan said.
        let real = compress(&mut s, room, opts("100,50,25", 37));
        assert_eq!(real.rows_after, after);
    }
}

#[test]
fn plan_honours_after_group_and_max_groups() {
    let mut s = memstore_linear(300);
    let mut o = opts("10,5", 50);
    o.after_group = Some(100);
    o.max_groups = Some(120);
    let (_, plan) = engine::plan_room(&mut s, "!a:hs", o).unwrap();
    assert_eq!(plan.len(), 120);
    assert_eq!(plan[0].group, 101);
    assert!(plan.iter().all(|p| p.group > 100 && p.group <= 220));
}

fn memstore_linear(n: usize) -> synapse_compress_testkit::memstore::MemStore {
    let mut s = synapse_compress_testkit::memstore::MemStore::default();
    linear_room(&mut s, "!a:hs", 1, n);
    s
}
