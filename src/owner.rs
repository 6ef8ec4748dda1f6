//! Synapse's tables belong to Synapse's role, which can attach triggers, rules,
//! policies and index expressions to them, and set the database's `search_path`.
//! Whoever calls us (a superuser, the worker), every access to those tables runs as
//! their owner inside a security-restricted operation with `search_path` pinned to
//! `pg_catalog, pg_temp`, as PostgreSQL runs VACUUM and REFRESH MATERIALIZED VIEW
//! (`RefreshMatViewByOid` in matview.c). Planted code then runs with the owner's rights
//! only, and cannot change roles or settings that outlive the operation.
//!
//! The same holds for the existing tool's `state_compressor_*` tables: Synapse's role
//! owns them when the tool created them, and so they are created here too.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use synapse_compress_core::{Error, Result};

use crate::spi::plans;
use crate::spi::settings::{with_settings, Setting};
use crate::spi::store::{free_result, spi};

/// Synapse's tables, then the existing tool's; all must share one owner.
const SYNAPSE_TABLES: [&str; 6] = [
    "state_groups",
    "state_groups_state",
    "state_group_edges",
    "state_groups_pending_deletion",
    "state_groups_persisting",
    // The main store's, when it shares the database: tells unknown rooms from empty ones.
    "rooms",
];
const TOOL_TABLES: [&str; 3] = [
    "state_compressor_state",
    "state_compressor_progress",
    "state_compressor_total_progress",
];
/// Without these there is nothing to compress.
const REQUIRED: [&str; 3] = ["state_groups", "state_groups_state", "state_group_edges"];

/// What a caller is about to do with the state tables.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Dry runs, counts, views.
    Read,
    /// Rewrites and progress.
    Write,
}

/// The schema holding Synapse's state tables and the role that owns them.
#[derive(Clone)]
pub struct StateTables {
    /// The schema, quoted for SQL text.
    schema: String,
    owner: pg_sys::Oid,
    /// Synapse >= 1.124's deletion tables are there.
    has_deletion_tables: bool,
    has_rooms_table: bool,
    /// The existing tool's tables are all there.
    has_tool_tables: bool,
}

impl StateTables {
    /// Find the tables in the schema recorded in `synapse_compress.control`, check
    /// they can be handled safely, and that the calling role may `access` them itself.
    pub fn resolve(client: &SpiClient<'_>, access: Access) -> Result<StateTables> {
        // Kept plans (`spi::plans`): resolved for every chunk of a scheduled run.
        let plan = plans::kept(
            client,
            "SELECT c.state_schema, pg_catalog.quote_ident(c.state_schema) \
             FROM synapse_compress.control c",
            &[],
            false,
        )?;
        let table = client.select(&*plan, None, &[]).map_err(spi)?;
        let (name, quoted) = if table.is_empty() {
            (None, None)
        } else {
            table.first().get_two::<String, String>().map_err(spi)?
        };
        free_result();
        let (Some(name), Some(schema)) = (name, quoted) else {
            return Err(Error::Store("synapse_compress.control has no row".into()));
        };

        let mut found: Vec<(String, pg_sys::Oid, String, bool)> = Vec::new();
        let names: Vec<&str> = SYNAPSE_TABLES.iter().chain(&TOOL_TABLES).copied().collect();
        let args: [DatumWithOid; 3] = [
            name.as_str().into(),
            names.into(),
            (access == Access::Write).into(),
        ];
        let plan = plans::kept(
            client,
            // has_table_privilege with a list is true if ANY is held: ask each. Checked
            // at each execution, for the role running it then.
            "SELECT c.relname::text, c.relowner, c.relkind::text, \
                    pg_catalog.has_table_privilege(c.oid, 'SELECT') AND (NOT $3 OR \
                      pg_catalog.has_table_privilege(c.oid, 'INSERT') AND \
                      pg_catalog.has_table_privilege(c.oid, 'UPDATE') AND \
                      pg_catalog.has_table_privilege(c.oid, 'DELETE')) \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2)",
            &args,
            false,
        )?;
        let rows = client.select(&*plan, None, &args).map_err(spi)?;
        for row in rows {
            let rel: Option<String> = row.get(1).map_err(spi)?;
            let owner: Option<pg_sys::Oid> = row.get(2).map_err(spi)?;
            let kind: Option<String> = row.get(3).map_err(spi)?;
            let granted: Option<bool> = row.get(4).map_err(spi)?;
            if let (Some(rel), Some(owner), Some(kind)) = (rel, owner, kind) {
                found.push((rel, owner, kind, granted == Some(true)));
            }
        }
        free_result();

        for required in REQUIRED {
            if !found.iter().any(|(rel, ..)| rel == required) {
                return Err(Error::NoStateTables {
                    schema: name,
                    table: required,
                });
            }
        }
        let owner_of = |rel: &str| found.iter().find(|f| f.0 == rel).map(|f| f.1);
        let owner = owner_of("state_groups_state").expect("checked above");
        for (rel, rel_owner, kind, granted) in &found {
            if *rel_owner != owner {
                return Err(Error::Unsafe {
                    reason: format!(
                        "{name}.{rel} and {name}.state_groups_state have different owners"
                    ),
                    hint: format!(
                        "Rewrites run as the owner of the state tables, so they must all have one \
                         owner: ALTER TABLE {schema}.{rel} OWNER TO (the owner of state_groups_state)."
                    ),
                });
            }
            // A view or foreign table in place of a table could run anything on read.
            if kind != "r" && kind != "p" {
                return Err(Error::Unsafe {
                    reason: format!("{name}.{rel} is not an ordinary table (relkind {kind})"),
                    hint: "Only Synapse's own tables are compressed; check the schema with \
                           SELECT synapse_compress.set_state_schema(...)."
                        .into(),
                });
            }
            if !granted && REQUIRED.contains(&rel.as_str()) {
                return Err(Error::Unsafe {
                    reason: format!(
                        "the current role may not {} {name}.{rel} itself",
                        match access {
                            Access::Read => "read",
                            Access::Write => "read and write",
                        }
                    ),
                    hint: "Compression runs as the tables' owner, but only for a role that could do \
                           the same work itself: run it as Synapse's role, a superuser, or GRANT \
                           SELECT, INSERT, UPDATE, DELETE on the state tables (see the README, Security)."
                        .into(),
                });
            }
        }
        let has = |rels: &[&str]| rels.iter().all(|t| owner_of(t).is_some());
        Ok(StateTables {
            schema,
            owner,
            has_deletion_tables: has(&["state_groups_pending_deletion", "state_groups_persisting"]),
            has_rooms_table: has(&["rooms"]),
            has_tool_tables: has(&TOOL_TABLES),
        })
    }

    /// `sql` with every `@s.` replaced by the schema: `@s.state_groups` becomes
    /// `"public".state_groups`. Templates are constants; only the quoted schema varies.
    pub fn sql(&self, template: &str) -> String {
        template.replace("@s.", &format!("{}.", self.schema))
    }

    /// Whether the existing tool's tables exist (else nothing was saved yet).
    pub fn has_tool_tables(&self) -> bool {
        self.has_tool_tables
    }

    pub fn has_deletion_tables(&self) -> bool {
        self.has_deletion_tables
    }

    pub fn has_rooms_table(&self) -> bool {
        self.has_rooms_table
    }

    /// Create the existing tool's tables, with its exact shapes, where it would: in the
    /// state tables' schema, owned by their owner. Call inside `Owner::run`, before any
    /// of Synapse's rows is locked (it may wait): `compress_room` and `begin_run` do, so
    /// saving progress later finds them.
    pub fn ensure_tool_tables(&mut self, client: &mut SpiClient<'_>) -> Result<()> {
        if self.has_tool_tables {
            return Ok(());
        }
        // CREATE TABLE IF NOT EXISTS is not safe against itself: two sessions creating
        // the same table at once both insert its row type, and the second fails with
        // 23505 on pg_type's unique index once the first commits. The first creator
        // holds this lock until it commits; the next then finds the tables.
        client
            .select(
                "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('synapse_compress: the tool''s tables'))",
                None,
                &[],
            )
            .map_err(spi)?;
        free_result();
        // Whoever held the lock before us may have created them: then there is nothing
        // to do (and no "already exists, skipping" NOTICE for the caller). The catalog
        // caches are refreshed first, as after any lock PostgreSQL takes itself; should
        // the lookup still miss them, CREATE ... IF NOT EXISTS finds them.
        // SAFETY: backend thread, inside a transaction.
        unsafe { pg_sys::AcceptInvalidationMessages() };
        if self.tool_tables_exist(client)? {
            self.has_tool_tables = true;
            return Ok(());
        }
        for ddl in [
            "CREATE TABLE IF NOT EXISTS @s.state_compressor_state ( \
                 room_id TEXT NOT NULL, level_num INT NOT NULL, max_size INT NOT NULL, \
                 current_length INT NOT NULL, current_head BIGINT, UNIQUE (room_id, level_num))",
            "CREATE TABLE IF NOT EXISTS @s.state_compressor_progress ( \
                 room_id TEXT PRIMARY KEY, last_compressed BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS @s.state_compressor_total_progress ( \
                 lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE, \
                 lowest_uncompressed_group BIGINT NOT NULL, CHECK (lock = 'X'))",
        ] {
            client.update(&self.sql(ddl), None, &[]).map_err(spi)?;
            free_result();
        }
        // The tool's one row, inserted by whoever created the table. At REPEATABLE READ
        // a table another session created (and filled) after this snapshot is found by
        // the CREATE above, but neither its pg_class row nor its row is visible:
        // inserting would then fail with 23505, so it is skipped. (Created here, or
        // before the snapshot, its pg_class row is visible and NOT EXISTS is exact.)
        let table = format!("{}.state_compressor_total_progress", self.schema);
        client
            .update(
                &self.sql(
                    "INSERT INTO @s.state_compressor_total_progress (lowest_uncompressed_group) \
                     SELECT 0 WHERE NOT EXISTS (SELECT FROM @s.state_compressor_total_progress) \
                       AND EXISTS (SELECT FROM pg_catalog.pg_class \
                                   WHERE oid = $1::pg_catalog.text::pg_catalog.regclass)",
                ),
                None,
                &[table.as_str().into()],
            )
            .map_err(spi)?;
        free_result();
        self.has_tool_tables = true;
        Ok(())
    }

    fn tool_tables_exist(&self, client: &mut SpiClient<'_>) -> Result<bool> {
        let names: Vec<String> = TOOL_TABLES
            .iter()
            .map(|t| format!("{}.{}", self.schema, t))
            .collect();
        let all = client
            .select(
                "SELECT pg_catalog.bool_and(pg_catalog.to_regclass(t) IS NOT NULL) \
                 FROM pg_catalog.unnest($1::pg_catalog.text[]) AS t",
                None,
                &[names.into()],
            )
            .map_err(spi)?
            .first()
            .get_one::<bool>()
            .map_err(spi)?
            .unwrap_or(false);
        free_result();
        Ok(all)
    }

    /// The role that owns the tables, to run their accesses as (`Owner::run`).
    pub fn owner(&self) -> Owner {
        Owner(self.owner)
    }
}

/// The role owning Synapse's tables.
#[derive(Clone, Copy)]
pub struct Owner(pg_sys::Oid);

impl Owner {
    /// Run `f` as this role, security-restricted, with `search_path` pinned, `jit` off
    /// and `lock_timeout` set to `synapse_compress.lock_timeout`.
    ///
    /// If `f` raises an ERROR, the (sub)transaction that catches it restores the
    /// identity and settings on abort, as it does for VACUUM's: nothing here must.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context: std::ffi::c_int = 0;
        // SAFETY: backend thread, inside a transaction; the same sequence as
        // RefreshMatViewByOid, undone below (or by the abort of the transaction).
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                self.0,
                saved_context | pg_sys::SECURITY_RESTRICTED_OPERATION as std::ffi::c_int,
            );
        }
        let mut settings = vec![
            Setting::new(c"search_path", "pg_catalog, pg_temp"),
            // Our statements are index lookups, and the run's whole-database scans run
            // once: JIT compilation costs more than it saves on them (292 ms of the
            // 493 ms tangled-groups scan over 140k groups).
            Setting::new(c"jit", "off"),
        ];
        let wait = crate::gucs::LOCK_TIMEOUT.get();
        if wait > 0 {
            settings.push(Setting::new(c"lock_timeout", format!("{wait}ms")));
        }
        let out = with_settings(&settings, f);
        // SAFETY: pairs with the above.
        unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
        out
    }
}
