//! Per-room control from SQL (`synapse_compress.room_settings`): exclude a room from
//! scheduled runs or include it again, give it a priority, or its own levels. Every
//! scheduled run (the worker and `CALL compress_database()`) honours them
//! (`schedule::pick_room`, `schedule::room_levels`); `compress_room`, an explicit
//! request with explicit arguments, does not look at them.
//!
//! Also the `rooms` view's readers of Synapse's tables (`room_state_groups`,
//! `room_progress`) and `reset_room`, which run as the tables' owner.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use synapse_compress_core::{Error, LevelSpec, Result};

use crate::schedule;
use crate::spi::store::{free_result, spi};

/// The column a setter writes (fixed names: never from input).
#[derive(Clone, Copy)]
enum Column {
    Excluded,
    Priority,
    Levels,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Excluded => "excluded",
            Column::Priority => "priority",
            Column::Levels => "levels",
        }
    }
}

/// Set one column of a room's settings; `42704` for a room that has no state groups
/// and that no run or setting knows.
fn set(client: &mut SpiClient<'_>, room: &str, column: Column, value: DatumWithOid) -> Result<()> {
    if room.is_empty() {
        return Err(Error::InvalidArgument {
            name: "room_id",
            reason: "it is empty".into(),
        });
    }
    let known = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM synapse_compress.room_queue WHERE room_id = $1) \
                 OR EXISTS (SELECT 1 FROM synapse_compress.room_settings WHERE room_id = $1)",
            None,
            &[room.into()],
        )
        .map_err(spi)?
        .first()
        .get_one::<bool>()
        .map_err(spi)?
        == Some(true);
    free_result();
    if !known && schedule::room_state_groups(client, room)? == 0 {
        return Err(Error::UnknownRoom(room.to_string()));
    }
    let c = column.name();
    client
        .update(
            &format!(
                "INSERT INTO synapse_compress.room_settings AS s (room_id, {c}) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET {c} = excluded.{c}"
            ),
            None,
            &[room.into(), value],
        )
        .map_err(spi)?;
    free_result();
    Ok(())
}

/// Levels as stored: validated and written the canonical way (`100,50,25`).
fn canonical_levels(levels: Option<&str>) -> Result<Option<String>> {
    levels
        .map(|l| LevelSpec::parse(l).map(|s| s.to_string()))
        .transpose()
}

#[pg_schema]
pub mod synapse_compress {
    use pgrx::prelude::*;

    use super::{canonical_levels, set, Column};
    use crate::errors::{clean, raise, required};
    use crate::schedule;

    fn run(room: &str, column: Column, value: pgrx::datum::DatumWithOid<'static>) {
        clean(|| Spi::connect_mut(|client| set(client, room, column, value)))
            .unwrap_or_else(|e| raise(e))
    }

    /// Leave a room out of every scheduled run (the worker, `compress_database`).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn exclude_room(room_id: Option<&str>) {
        run(required(room_id, "room_id"), Column::Excluded, true.into());
    }

    /// Let scheduled runs compress a room again.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn include_room(room_id: Option<&str>) {
        run(required(room_id, "room_id"), Column::Excluded, false.into());
    }

    /// Scheduled runs take rooms with a higher priority first (default 0).
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn set_room_priority(room_id: Option<&str>, priority: Option<i32>) {
        let room = required(room_id, "room_id");
        run(
            room,
            Column::Priority,
            required(priority, "priority").into(),
        );
    }

    /// The levels scheduled runs compress a room with; NULL: synapse_compress.levels.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn set_room_levels(room_id: Option<&str>, levels: Option<&str>) {
        let room = required(room_id, "room_id");
        let levels = canonical_levels(levels).unwrap_or_else(|e| raise(e));
        run(room, Column::Levels, levels.into());
    }

    /// Number of state groups of a room (the rooms view's state_groups column).
    #[pg_extern(stable, parallel_restricted)]
    #[search_path(pg_catalog, pg_temp)]
    fn room_state_groups(room_id: Option<&str>) -> Option<i64> {
        let room = room_id?;
        clean(|| Spi::connect(|client| schedule::room_state_groups(client, room)))
            .map(Some)
            .unwrap_or_else(|e| raise(e))
    }

    /// Every room's saved progress in the existing tool's tables (the rooms view).
    #[allow(clippy::type_complexity)]
    #[pg_extern(stable, parallel_restricted)]
    #[search_path(pg_catalog, pg_temp)]
    fn room_progress() -> TableIterator<
        'static,
        (
            name!(room_id, String),
            name!(compressed_up_to, i64),
            name!(levels, Option<String>),
        ),
    > {
        let rows = clean(|| Spi::connect(schedule::room_progress)).unwrap_or_else(|e| raise(e));
        TableIterator::new(rows)
    }

    /// Forget a room's saved levels, progress and errors: the next run starts it over.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn reset_room(room_id: Option<&str>) {
        let room = required(room_id, "room_id");
        clean(|| Spi::connect_mut(|client| schedule::reset_room(client, room)))
            .unwrap_or_else(|e| raise(e))
    }
}
