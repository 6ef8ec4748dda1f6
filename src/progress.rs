//! A room's saved progress in the existing tool's tables (`state_compressor_progress`,
//! `state_compressor_state`), read and written exactly as synapse_auto_compressor
//! does, so either can continue where the other stopped. Call these as the tables'
//! owner (`Owner::run`): Synapse's role owns the tool's tables.

use pgrx::datum::DatumWithOid;
use pgrx::spi::SpiClient;
use synapse_compress_core::engine::Progress;
use synapse_compress_core::levels::Level;
use synapse_compress_core::{Error, LevelSpec, Levels, Result};

use crate::owner::StateTables;
use crate::spi::plans;
use crate::spi::store::{free_result, spi};

/// The room's progress, or a fresh start with `default` levels. Saved levels that do
/// not make sense are replaced by fresh ones (always safe: the next group starts a
/// new tree); `corrected` tells the caller.
pub fn load(
    client: &SpiClient<'_>,
    tables: &StateTables,
    room: &str,
    default: &LevelSpec,
) -> Result<(Progress, bool)> {
    if !tables.has_tool_tables() {
        let fresh = Progress {
            last_compressed: 0,
            levels: Levels::new(default),
        };
        return Ok((fresh, false));
    }
    // One statement: the progress row (at most one), and the levels in order (none:
    // one row whose level columns are NULL).
    let args: [DatumWithOid; 1] = [room.into()];
    let plan = plans::kept(
        client,
        &tables.sql(
            "SELECT p.last_compressed, s.max_size, s.current_length, s.current_head \
             FROM (SELECT) AS one \
             LEFT JOIN @s.state_compressor_progress p ON p.room_id = $1 \
             LEFT JOIN @s.state_compressor_state s ON s.room_id = $1 \
             ORDER BY s.level_num",
        ),
        &args,
        false,
    )?;
    let table = client.select(&*plan, None, &args).map_err(spi)?;
    let mut last_compressed = 0;
    let mut saved = Vec::new();
    for row in table {
        last_compressed = row.get::<i64>(1).map_err(spi)?.unwrap_or(0);
        // max_size is NOT NULL in the table: NULL here means no level row.
        let Some(max_size) = row.get::<i32>(2).map_err(spi)? else {
            continue;
        };
        let current_length = row.get::<i32>(3).map_err(spi)?.unwrap_or(-1);
        // The tool writes 0 for "no head" in some versions, NULL in others.
        let head = row.get::<i64>(4).map_err(spi)?.filter(|h| *h > 0);
        saved.push((max_size, current_length, head));
    }
    free_result();
    if saved.is_empty() {
        let levels = Levels::new(default);
        return Ok((
            Progress {
                last_compressed: last_compressed.max(0),
                levels,
            },
            false,
        ));
    }
    let restored = saved
        .iter()
        .map(|&(max_size, current_length, head)| {
            Ok(Level {
                max_size: u32::try_from(max_size).map_err(|_| bad_level())?,
                current_length: u32::try_from(current_length).map_err(|_| bad_level())?,
                head,
            })
        })
        .collect::<Result<Vec<Level>>>()
        .and_then(Levels::restore);
    Ok(match restored {
        Ok(levels) => (
            Progress {
                last_compressed: last_compressed.max(0),
                levels,
            },
            false,
        ),
        Err(_) => (
            Progress {
                last_compressed: last_compressed.max(0),
                levels: Levels::new(default),
            },
            true,
        ),
    })
}

fn bad_level() -> Error {
    Error::InvalidLevels("a saved level is negative".into())
}

/// Save the room's progress (in the caller's transaction, with the chunk's writes).
pub fn save(
    client: &mut SpiClient<'_>,
    tables: &mut StateTables,
    room: &str,
    p: &Progress,
) -> Result<()> {
    tables.ensure_tool_tables(client)?;
    let levels = p.levels.levels();
    let nums: Vec<i32> = (1..=levels.len() as i32).collect();
    let sizes: Vec<i32> = levels.iter().map(|l| l.max_size as i32).collect();
    let lengths: Vec<i32> = levels.iter().map(|l| l.current_length as i32).collect();
    let heads: Vec<Option<i64>> = levels.iter().map(|l| l.head).collect();
    plans::exec(
        client,
        &tables.sql("DELETE FROM @s.state_compressor_state WHERE room_id = $1"),
        &[room.into()],
    )?;
    // The levels and the progress row in one statement (two tables).
    plans::exec(
        client,
        &tables.sql(
            "WITH progress AS ( \
                 INSERT INTO @s.state_compressor_progress (room_id, last_compressed) \
                 VALUES ($1, $6) ON CONFLICT (room_id) \
                 DO UPDATE SET last_compressed = excluded.last_compressed) \
             INSERT INTO @s.state_compressor_state \
                 (room_id, level_num, max_size, current_length, current_head) \
             SELECT $1, u.n, u.s, u.l, u.h \
             FROM unnest($2::int[], $3::int[], $4::int[], $5::bigint[]) AS u(n, s, l, h)",
        ),
        &[
            room.into(),
            nums.into(),
            sizes.into(),
            lengths.into(),
            heads.into(),
            p.last_compressed.into(),
        ],
    )
}
