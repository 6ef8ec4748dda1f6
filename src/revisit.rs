//! Re-compression below a room's saved progress, decided at the start of every
//! scheduled run (`schedule::begin_run`, for the worker and `compress_database` alike).
//! Runs only look past each room's progress; two things put uncompressed groups below
//! it, and this module sends the room's progress back so the next chunks compress them
//! again through the same engine (load → plan → verify → write).
//!
//! **De-deltas.** Since Synapse 1.124 its deletion loop turns the surviving children of
//! the groups it deletes into full snapshots. Scanning for them costs a pass over
//! `state_groups` ⟕ `state_group_edges`, so it is done only when `state_groups` lost
//! rows since the last scan: its deleted-tuple counter (`pg_stat_get_tuples_deleted`)
//! differs from the one recorded then. A de-delta always deletes a group (the child's
//! predecessor), and the extension never deletes groups, so an unchanged counter means
//! no new de-delta. (A statistics reset changes it too: one extra scan. With
//! `track_counts` off, every run scans.) The scan finds groups without an edge at or
//! below a room's progress that are not in `synapse_compress.room_snapshots`, where
//! every chunk records the snapshots it left (the room's first group, each new tree's
//! root, the groups of a chunk that was undone).
//!
//! **Late commits.** Synapse takes a group's id from the sequence before its
//! transaction commits, so a group can become visible after a run has passed its id.
//! Every run start records the ids up to the newest group that are missing then
//! (`late_gaps`: in flight, or rolled back); the next start looks them up (primary
//! key lookups): those now present committed late. (A group's `xmin` cannot tell:
//! a rewrite updates its `state_groups` row to lock it.) Ids stop being tracked
//! below `late_floor`, which moves up to a recorded start's newest id (`late_upto`)
//! once both hold:
//! - every transaction that had a transaction id at that start's snapshot
//!   (`late_snapshot`) has ended (`pg_snapshot_xmax(recorded) <=
//!   pg_snapshot_xmin(now)`): an id up to it was taken before that snapshot, so a
//!   transaction that had written since would have been in it;
//! - and `LATE_SETTLE` has passed since that start (`late_at`): `nextval` alone
//!   gives a transaction no transaction id, so one that took an id and had not
//!   inserted yet is in no snapshot. Synapse inserts the group right after taking
//!   its id, in the same transaction; ten minutes covers any stall between the two.
//!
//! The recorded start is kept until it settles, then the current start replaces it.
//! Ids cached by a sequence with `CACHE` > 1 are not covered (Synapse's has 1).
//! Tracking starts at the first run: ids up to its newest group count as settled.
//! On an unchanged database the window is empty and nothing is looked up.
//!
//! **The redo.** For each room with such a group `a` at or below its progress, the
//! progress goes back to just below the highest full snapshot the runs recorded below
//! `a` (else the room's start), with fresh levels: that snapshot stays a snapshot (it
//! was one), and the groups after it are planned again, `a` among them, so `a` becomes
//! a delta again. Groups the earlier pass compressed are planned the same way again:
//! a redo costs one pass over that stretch of the room. (If Synapse deleted that
//! snapshot too, the first group after it becomes the new tree's root.)

use pgrx::datum::DatumWithOid;
use pgrx::spi::SpiClient;
use synapse_compress_core::{GroupId, Result};

use crate::owner::StateTables;
use crate::spi::plans::exec;
use crate::spi::store::{free_result, spi};

/// What a run start found and sent back.
#[derive(Default, Debug)]
pub struct Revisit {
    /// Whether the de-delta scan ran (the deleted-tuple counter moved).
    pub scanned: bool,
    pub dedeltas: i64,
    pub late: i64,
    /// Rooms whose progress went back.
    pub rooms: i64,
}

/// Rows of (room, group, is a snapshot) from `sql`.
fn groups(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Vec<(String, GroupId, bool)>> {
    let table = client.select(sql, None, args).map_err(spi)?;
    let mut out = Vec::new();
    for row in table {
        let room: Option<String> = row.get(1).map_err(spi)?;
        let id: Option<i64> = row.get(2).map_err(spi)?;
        let snapshot: Option<bool> = row.get(3).map_err(spi)?;
        if let (Some(room), Some(id)) = (room, id) {
            out.push((room, id, snapshot.unwrap_or(false)));
        }
    }
    free_result();
    Ok(out)
}

/// Record the full snapshots a chunk of `room` left among its groups `first..=last`
/// (in the chunk's transaction).
pub fn record_chunk(
    client: &mut SpiClient<'_>,
    room: &str,
    first: GroupId,
    last: GroupId,
    snapshots: &[GroupId],
) -> Result<()> {
    exec(
        client,
        "DELETE FROM synapse_compress.room_snapshots \
         WHERE room_id = $1 AND state_group BETWEEN $2 AND $3",
        &[room.into(), first.into(), last.into()],
    )?;
    if snapshots.is_empty() {
        return Ok(());
    }
    exec(
        client,
        "INSERT INTO synapse_compress.room_snapshots (room_id, state_group) \
         SELECT $1, s FROM unnest($2::bigint[]) AS s ON CONFLICT DO NOTHING",
        &[room.into(), snapshots.to_vec().into()],
    )
}

/// Record every full snapshot of `room` up to `upto` (after `compress_room`, which
/// rewrote the room outside the scheduled chunks). Reads as the tables' owner.
pub fn record_room(
    client: &mut SpiClient<'_>,
    tables: &StateTables,
    room: &str,
    upto: GroupId,
) -> Result<()> {
    let sql = tables.sql(
        "SELECT g.room_id, g.id, true FROM @s.state_groups g \
         WHERE g.room_id = $1 AND g.id <= $2 \
           AND NOT EXISTS (SELECT 1 FROM @s.state_group_edges e WHERE e.state_group = g.id)",
    );
    let found = tables
        .owner()
        .run(|| groups(client, &sql, &[room.into(), upto.into()]))?;
    let ids: Vec<GroupId> = found.iter().map(|(_, id, _)| *id).collect();
    record_chunk(client, room, 0, upto, &ids)
}

/// Forget what was recorded of `room` (`reset_room`).
pub fn forget_room(client: &mut SpiClient<'_>, room: &str) -> Result<()> {
    exec(
        client,
        "DELETE FROM synapse_compress.room_snapshots WHERE room_id = $1",
        &[room.into()],
    )
}

/// How long after a recorded run start its ids may still commit late (see the
/// module's comment).
const LATE_SETTLE: &str = "10 minutes";

/// At a run's start (the control row locked): find de-deltaed and late groups below
/// rooms' progress and send those rooms back. `upto` and `snapshot` are the run's
/// newest group and the snapshot it was read in.
pub fn at_run_start(
    client: &mut SpiClient<'_>,
    tables: &StateTables,
    upto: GroupId,
    snapshot: &str,
) -> Result<Revisit> {
    let mut found = Revisit::default();
    let table = client
        .select(
            "SELECT groups_deleted_seen, late_snapshot::text, late_upto, late_floor, late_gaps, \
                    pg_catalog.pg_stat_get_tuples_deleted(pg_catalog.to_regclass($1)), \
                    pg_catalog.current_setting('track_counts')::boolean, \
                    coalesce(pg_catalog.clock_timestamp() - late_at >= $2::interval, true) \
             FROM synapse_compress.control",
            None,
            &[tables.sql("@s.state_groups").into(), LATE_SETTLE.into()],
        )
        .map_err(spi)?;
    let row = table.first();
    let seen: Option<i64> = row.get(1).map_err(spi)?;
    let late_snapshot: Option<String> = row.get(2).map_err(spi)?;
    let late_upto = row.get::<i64>(3).map_err(spi)?.unwrap_or(0);
    let late_floor = row.get::<i64>(4).map_err(spi)?.unwrap_or(0);
    let late_gaps: Vec<i64> = row.get::<Vec<i64>>(5).map_err(spi)?.unwrap_or_default();
    let deleted = row.get::<i64>(6).map_err(spi)?.unwrap_or(0);
    let track_counts = row.get::<bool>(7).map_err(spi)?.unwrap_or(false);
    let old_enough = row.get::<bool>(8).map_err(spi)?.unwrap_or(true);
    free_result();
    let owner = tables.owner();
    let mut affected: Vec<(String, GroupId, bool)> = Vec::new();

    // Late commits. The floor first: ids up to the last start's newest are settled
    // once every transaction with an id in its snapshot has ended.
    let floor = match &late_snapshot {
        None => upto,
        Some(_) if !old_enough => late_floor,
        Some(prev) => {
            let t = client
                .select(
                    "SELECT pg_catalog.pg_snapshot_xmax($1::pg_snapshot) \
                         <= pg_catalog.pg_snapshot_xmin($2::pg_snapshot)",
                    None,
                    &[prev.as_str().into(), snapshot.into()],
                )
                .map_err(spi)?;
            let settled = t.first().get_one::<bool>().map_err(spi)?;
            free_result();
            if settled == Some(true) {
                late_floor.max(late_upto)
            } else {
                late_floor
            }
        }
    };
    // The ids above the floor missing now (in flight, rolled back), then the last
    // start's missing ids that are there now: committed late. In this order, an id
    // committing in between is in both (found twice at worst, never missed).
    let gaps_sql = tables.sql(
        "SELECT coalesce(array_agg(s.i ORDER BY s.i), '{}') \
         FROM generate_series($1::bigint + 1, $2::bigint) AS s(i) \
         WHERE NOT EXISTS (SELECT 1 FROM @s.state_groups g WHERE g.id = s.i)",
    );
    let late_sql = tables.sql(
        "SELECT DISTINCT ON (g.room_id) g.room_id, g.id, false FROM @s.state_groups g \
         WHERE g.id = ANY($1::bigint[]) ORDER BY g.room_id, g.id",
    );
    let (mut gaps, late) = owner.run(|| -> Result<_> {
        let t = client
            .select(&gaps_sql, None, &[floor.into(), upto.into()])
            .map_err(spi)?;
        let gaps = t
            .first()
            .get_one::<Vec<i64>>()
            .map_err(spi)?
            .unwrap_or_default();
        free_result();
        let late = if late_gaps.is_empty() {
            Vec::new()
        } else {
            groups(client, &late_sql, &[late_gaps.clone().into()])?
        };
        Ok((gaps, late))
    })?;
    if !late.is_empty() {
        let present: Vec<i64> = late.iter().map(|(_, id, _)| *id).collect();
        gaps.retain(|g| !present.contains(g));
    }
    found.late = late.len() as i64;
    affected.extend(late);

    // De-deltas: only when state_groups lost rows since the last scan.
    let scan = tables.has_tool_tables() && (seen != Some(deleted) || !track_counts);
    if scan {
        found.scanned = true;
        let sql = tables.sql(
            "SELECT g.room_id, g.id, true FROM @s.state_groups g \
             JOIN @s.state_compressor_progress p ON p.room_id = g.room_id \
             WHERE g.id <= p.last_compressed \
               AND NOT EXISTS (SELECT 1 FROM @s.state_group_edges e WHERE e.state_group = g.id)",
        );
        let snapshots = owner.run(|| groups(client, &sql, &[]))?;
        let rooms: Vec<String> = snapshots.iter().map(|(r, _, _)| r.clone()).collect();
        let ids: Vec<i64> = snapshots.iter().map(|(_, id, _)| *id).collect();
        if seen.is_none() {
            // First scan: what is there now is the baseline (rooms compressed before
            // snapshots were recorded), not de-deltas.
            exec(
                client,
                "INSERT INTO synapse_compress.room_snapshots (room_id, state_group) \
                 SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
                &[rooms.into(), ids.into()],
            )?;
        } else {
            let new = groups(
                client,
                "SELECT s.room_id, min(s.id), true \
                 FROM unnest($1::text[], $2::bigint[]) AS s(room_id, id) \
                 WHERE NOT EXISTS (SELECT 1 FROM synapse_compress.room_snapshots k \
                                   WHERE k.room_id = s.room_id AND k.state_group = s.id) \
                 GROUP BY s.room_id",
                &[rooms.into(), ids.into()],
            )?;
            found.dedeltas = new.len() as i64;
            affected.extend(new);
        }
        prune_deleted(client, tables)?;
    }

    // Per room, the lowest affected group.
    affected.sort();
    affected.dedup_by(|b, a| a.0 == b.0);
    if !tables.has_tool_tables() {
        // No progress saved anywhere: nothing is below a room's progress.
        affected.clear();
    }
    for (room, group, _) in affected {
        if send_back(client, tables, &room, group, upto)? {
            found.rooms += 1;
        }
    }
    exec(
        client,
        // The recorded start is replaced once settled (the floor reached it).
        "UPDATE synapse_compress.control SET groups_deleted_seen = CASE WHEN $1 THEN $2 ELSE groups_deleted_seen END, \
             late_snapshot = CASE WHEN $7 THEN $3::pg_snapshot ELSE late_snapshot END, \
             late_at = CASE WHEN $7 THEN pg_catalog.clock_timestamp() ELSE late_at END, \
             late_upto = CASE WHEN $7 THEN $4 ELSE late_upto END, late_floor = $5, late_gaps = $6",
        &[
            // Without the tool's tables nothing is below a progress yet: the counter
            // now is the baseline.
            (scan || !tables.has_tool_tables()).into(),
            deleted.into(),
            snapshot.into(),
            upto.into(),
            floor.into(),
            gaps.into(),
            (late_snapshot.is_none() || floor >= late_upto).into(),
        ],
    )?;
    Ok(found)
}

/// Forget the recorded snapshots of groups Synapse has deleted since (their ids never
/// come back). Runs with the de-delta scan: only after state_groups lost rows.
fn prune_deleted(client: &mut SpiClient<'_>, tables: &StateTables) -> Result<()> {
    let t = client
        .select(
            "SELECT coalesce(array_agg(DISTINCT state_group), '{}') FROM synapse_compress.room_snapshots",
            None,
            &[],
        )
        .map_err(spi)?;
    let recorded = t
        .first()
        .get_one::<Vec<i64>>()
        .map_err(spi)?
        .unwrap_or_default();
    free_result();
    if recorded.is_empty() {
        return Ok(());
    }
    // Synapse's table is read as its owner; ours is written as ourselves.
    let sql = tables.sql(
        "SELECT coalesce(array_agg(i), '{}') FROM unnest($1::bigint[]) AS i \
         WHERE NOT EXISTS (SELECT 1 FROM @s.state_groups g WHERE g.id = i)",
    );
    let gone = tables.owner().run(|| -> Result<Vec<i64>> {
        let t = client.select(&sql, None, &[recorded.into()]).map_err(spi)?;
        let gone = t
            .first()
            .get_one::<Vec<i64>>()
            .map_err(spi)?
            .unwrap_or_default();
        free_result();
        Ok(gone)
    })?;
    if gone.is_empty() {
        return Ok(());
    }
    exec(
        client,
        "DELETE FROM synapse_compress.room_snapshots WHERE state_group = ANY($1)",
        &[gone.into()],
    )
}

/// Send `room`'s progress back to just below the nearest full snapshot the runs
/// recorded below `group` (see the module's comment), with fresh levels, and queue
/// the room. Waits
/// for a chunk of the room in progress. False if its progress had not passed `group`.
fn send_back(
    client: &mut SpiClient<'_>,
    tables: &StateTables,
    room: &str,
    group: GroupId,
    upto: GroupId,
) -> Result<bool> {
    exec(
        client,
        "SELECT pg_advisory_xact_lock(hashtext('synapse_compress'), hashtext($1))",
        &[room.into()],
    )?;
    let t = client
        .select(
            "SELECT max(state_group) FROM synapse_compress.room_snapshots \
             WHERE room_id = $1 AND state_group < $2",
            None,
            &[room.into(), group.into()],
        )
        .map_err(spi)?;
    let start = t.first().get_one::<i64>().map_err(spi)?;
    free_result();
    let after = start.map_or(0, |s| s - 1);
    let progress_sql = tables.sql(
        "UPDATE @s.state_compressor_progress SET last_compressed = $2 \
         WHERE room_id = $1 AND last_compressed >= $3 RETURNING 1",
    );
    let levels_sql = tables.sql("DELETE FROM @s.state_compressor_state WHERE room_id = $1");
    let count_sql = tables
        .sql("SELECT count(*) FROM @s.state_groups WHERE room_id = $1 AND id > $2 AND id <= $3");
    let pending = tables.owner().run(|| -> Result<Option<i64>> {
        let moved = !client
            .update(
                &progress_sql,
                None,
                &[room.into(), after.into(), group.into()],
            )
            .map_err(spi)?
            .is_empty();
        free_result();
        if !moved {
            return Ok(None);
        }
        exec(client, &levels_sql, &[room.into()])?;
        let t = client
            .select(&count_sql, None, &[room.into(), after.into(), upto.into()])
            .map_err(spi)?;
        let n = t.first().get_one::<i64>().map_err(spi)?;
        free_result();
        Ok(Some(n.unwrap_or(0)))
    })?;
    let Some(pending) = pending else {
        return Ok(false);
    };
    exec(
        client,
        "DELETE FROM synapse_compress.room_snapshots WHERE room_id = $1 AND state_group > $2",
        &[room.into(), after.into()],
    )?;
    exec(
        client,
        "INSERT INTO synapse_compress.room_queue AS q (room_id, pending_groups) VALUES ($1, $2) \
         ON CONFLICT (room_id) DO UPDATE SET pending_groups = greatest(q.pending_groups, excluded.pending_groups)",
        &[room.into(), pending.max(1).into()],
    )?;
    Ok(true)
}
