//! Plans kept for the backend's life (`SPI_keepplan`), one per query text, argument
//! types and read/write mode. A scheduled run asks the same few questions for every
//! room: planning them each time was about a tenth of a run over 2,000 small rooms
//! (pg_stat_statements' `total_plan_time`).
//!
//! PostgreSQL's plan cache keeps them right: a kept plan is re-planned when a table,
//! index or function it uses changes, or the search_path does; permissions are checked
//! at each execution, as the user running it then; and after five executions it
//! chooses between a generic plan and planning for the arguments, as for any prepared
//! statement.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{FromDatum, IntoDatum};
use synapse_compress_core::hash::FxHashMap;
use synapse_compress_core::Result;

use crate::spi::store::{free_result, spi};

/// What a plan is kept under.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    sql: String,
    types: Vec<u32>,
    mutating: bool,
}

/// More distinct plans than this (queries are built from a few constants, so it only
/// happens if one is built from data): the oldest are not kept apart, all are dropped.
const MAX_PLANS: usize = 256;

thread_local! {
    /// Never dropped: a thread-local's destructor runs in `exit()`, after the backend
    /// shut down, where freeing a plan must not be tried.
    static PLANS: ManuallyDrop<RefCell<FxHashMap<Key, Rc<OwnedPreparedStatement>>>> =
        ManuallyDrop::new(RefCell::new(FxHashMap::default()));
}

/// The kept plan of `sql` for arguments of `args`' types, prepared on first use.
/// `mutating`: for a statement that writes or locks rows (run through `update`).
pub fn kept(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid],
    mutating: bool,
) -> Result<Rc<OwnedPreparedStatement>> {
    let key = Key {
        sql: sql.to_string(),
        types: args.iter().map(|a| a.oid().to_u32()).collect(),
        mutating,
    };
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    let prepared = if mutating {
        client.prepare_mut(sql, &types)
    } else {
        client.prepare(sql, &types)
    }
    .map_err(spi)?;
    let plan = Rc::new(prepared.keep());
    PLANS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= MAX_PLANS {
            p.clear();
        }
        p.insert(key, Rc::clone(&plan));
    });
    Ok(plan)
}

/// The first column of the first row of `sql` (`None`: no row, or NULL), with its kept
/// plan; the result is freed.
pub fn one<T: FromDatum + IntoDatum>(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Option<T>> {
    let plan = kept(client, sql, args, false)?;
    let table = client.select(&*plan, None, args).map_err(spi)?;
    let v = if table.is_empty() {
        None
    } else {
        table.first().get_one::<T>().map_err(spi)?
    };
    free_result();
    Ok(v)
}

/// Run a statement that writes or locks, with its kept plan; its result is freed.
pub fn exec(client: &mut SpiClient<'_>, sql: &str, args: &[DatumWithOid]) -> Result<()> {
    let plan = kept(client, sql, args, true)?;
    client.update(&*plan, None, args).map_err(spi)?;
    free_result();
    Ok(())
}
