#!/usr/bin/env bash
# Upgrade in place: a database created with the first release (0.1.0, commit c7e1b0a,
# tag v0.1.0) keeps every room's saved levels and progress, the run history and the
# pause state through `ALTER EXTENSION synapse_compress UPDATE`, and compresses on.
#
#   bash pgrx-tests/upgrade/run.sh              (after `make install build`)
#
# The sequence, in a private copy of the server of PG_CONFIG (default Debian's 15) so
# the old release never lands in a shared install:
#   1. build the old release from git (cached in .cache/upgrade/<commit>-pg<major>/)
#      and install its files into the private tree;
#   2. CREATE EXTENSION ... VERSION '<old>', generate rooms, run some chunks, pause;
#      record room_queue, runs, control and the existing tool's state_compressor_*
#      tables;
#   3. install this build's files beside the old SQL script (as a package upgrade
#      does), restart, ALTER EXTENSION UPDATE;
#   4. check: the recorded rows unchanged, still paused, the upgraded schema the same
#      as a fresh install's, the state_compressor_* tables not members of the extension;
#   5. compress on after the update; DROP EXTENSION leaves the state_compressor_*
#      tables with their rows; CREATE EXTENSION again adopts them and finishes every
#      room; every group's state is kept throughout.
#
# Each future release adds its own step: set UPGRADE_FROM to the previous release's
# commit (or add a loop over releases here) and ship sql/synapse_compress--A--B.sql.
#
# Env: UPGRADE_FROM (commit or tag, default c7e1b0a = v0.1.0), UPGRADE_DIR, UPGRADE_PORT,
# NEW_STAGE (this build's `cargo pgrx package` output; default scripts/install.sh's).
# Prints "upgrade: N passed, N failed" last.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/pg-major.sh || exit 1
FROM=${UPGRADE_FROM:-c7e1b0a}
DIR=${UPGRADE_DIR:-/tmp/synapse_compress/upgrade}
PORT=${UPGRADE_PORT:-55446}
NEW_STAGE=${NEW_STAGE:-$ROOT/target/release/synapse_compress-pg$PG_MAJOR}
GEN="$ROOT/target/release/synapse-compress-gen"
LOG=/tmp/synapse_compress/e2e-logs/upgrade.log
DB=synapse
mkdir -p /tmp/synapse_compress/e2e-logs && chmod a+rx /tmp/synapse_compress
: >"$LOG"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok     $*"; }
fail() { failed=$((failed + 1)); echo "FAILED $*"; }
die() { fail "$*"; echo "upgrade: $passed passed, $failed failed"; exit 1; }
# check NAME COMMAND...: one test.
check() { local name=$1; shift; if "$@" >>"$LOG" 2>&1; then ok "$name"; else fail "$name (log: $LOG)"; fi; }

echo "== upgrade from $FROM on $("$PG_CONFIG" --version)"
[ -x "$GEN" ] || die "no $GEN (make build)"
[ -f "$NEW_STAGE/$("$PG_CONFIG" --pkglibdir)/synapse_compress.so" ] \
    || die "no staged build in $NEW_STAGE (make install)"
NEW_VERSION=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" \
    "$NEW_STAGE/$("$PG_CONFIG" --sharedir)/extension/synapse_compress.control")

# ---- 1. the old release, built once per commit and major ----------------------------
COMMIT=$(git rev-parse --verify -q "$FROM^{commit}") || die "unknown commit $FROM"
OLD=$ROOT/.cache/upgrade/$COMMIT-pg$PG_MAJOR
if [ ! -f "$OLD/done" ]; then
    echo "building synapse_compress at $FROM for PostgreSQL $PG_MAJOR (cached in $OLD)"
    src=$(mktemp -d)
    git archive "$COMMIT" | tar -x -C "$src"
    grep -q "^pg$PG_MAJOR = " "$src/Cargo.toml" \
        || die "the release at $FROM has no pg$PG_MAJOR feature: test the upgrade on a major it supports"
    rm -rf "$OLD"
    # A target dir of its own: the old workspace's crates have the names and versions
    # of the new ones, and git archive's old mtimes would make cargo take the new
    # crates' artifacts for fresh. A debug build is enough for the SQL-level upgrade.
    (cd "$src" && CARGO_TARGET_DIR=$ROOT/target/upgrade-old cargo pgrx package --debug \
        "${PG_FEATURES[@]}" --pg-config "$PG_CONFIG" --out-dir "$OLD" >>"$LOG" 2>&1) \
        || { rm -rf "$src"; die "building $FROM failed (log: $LOG)"; }
    rm -rf "$src"
    touch "$OLD/done"
fi
OLD_VERSION=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" \
    "$OLD/$("$PG_CONFIG" --sharedir)/extension/synapse_compress.control")
echo "   $OLD_VERSION -> $NEW_VERSION"

# ---- the private server: a copy of PG_CONFIG's installation -------------------------
# Debian's server is relocatable as /usr/lib/postgresql/N + /usr/share/postgresql/N
# (pg_config and postgres find the rest relative to their own location); a wheel's
# server is its whole unpacked wheel (.cache/pg/N: the binaries need its *.libs/).
TREE=$DIR.tree
bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1
rm -rf "$DIR" "$TREE"
bindir=$("$PG_CONFIG" --bindir)
case "$bindir" in
    "$ROOT"/.cache/pg/*)
        wheel=$ROOT/.cache/pg/$PG_MAJOR
        mkdir -p "$TREE" && cp -a "$wheel/." "$TREE/"
        PRIVATE=$TREE${bindir#"$wheel"}/pg_config ;;
    /usr/lib/postgresql/*/bin)
        mkdir -p "$TREE/usr/lib/postgresql" "$TREE/usr/share/postgresql"
        cp -a "/usr/lib/postgresql/$PG_MAJOR" "$TREE/usr/lib/postgresql/"
        cp -a "/usr/share/postgresql/$PG_MAJOR" "$TREE/usr/share/postgresql/"
        PRIVATE=$TREE$bindir/pg_config ;;
    *) die "do not know how to copy the server of $PG_CONFIG" ;;
esac
chmod -R a+rX "$TREE"
d=$TREE; while [ "$d" != / ]; do chmod a+x "$d" 2>/dev/null; d=$(dirname "$d"); done
LIBDIR=$("$PRIVATE" --pkglibdir)
EXTDIR=$("$PRIVATE" --sharedir)/extension
[ "$LIBDIR" != "$("$PG_CONFIG" --pkglibdir)" ] || die "$PRIVATE does not report relocated paths"
# Only the releases under test: no synapse_compress file the copied server had.
rm -f "$LIBDIR"/synapse_compress* "$EXTDIR"/synapse_compress*
# The private server: cluster.sh and psql use it from here on.
export PG_CONFIG=$PRIVATE
export PATH="$("$PRIVATE" --bindir):$PATH"
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1; rm -rf "$TREE"' EXIT

# install_files STAGE: a `cargo pgrx package` output's files into the private tree,
# each renamed into place; files already there and not in STAGE (the old release's
# SQL script) stay, as after a package upgrade.
install_files() {
    local f
    for f in $(find "$1" -type f -name 'synapse_compress*.so'); do
        cp "$f" "$LIBDIR/.new" && mv -f "$LIBDIR/.new" "$LIBDIR/$(basename "$f")"
    done
    for f in $(find "$1" -type f -path '*/extension/synapse_compress*'); do
        cp "$f" "$EXTDIR/.new" && mv -f "$EXTDIR/.new" "$EXTDIR/$(basename "$f")"
    done
}

# ---- 2. the old release at work ------------------------------------------------------
install_files "$OLD"
bash scripts/cluster.sh start "$DIR" "$PORT" >>"$LOG" 2>&1 || die "cluster start (log: $LOG)"
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
q() { psql -X -At -v ON_ERROR_STOP=1 -d "${QDB:-$DB}" "$@" 2>>"$LOG"; }
bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >>"$LOG" 2>&1 || die "createdb (log: $LOG)"
for args in "--preset manyrooms --scale 0.01 --seed 61" "--preset small --seed 62 --first-id 500000" \
    "--preset headline --scale 0.02 --seed 63 --first-id 700000"; do
    # shellcheck disable=SC2086
    "$GEN" $args | psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null 2>>"$LOG" || die "generator $args"
done
q -q -c "CREATE EXTENSION synapse_compress VERSION '$OLD_VERSION'" -f pgrx-tests/e2e/lib.sql >/dev/null \
    || die "CREATE EXTENSION synapse_compress VERSION '$OLD_VERSION' (log: $LOG)"
q -c "VACUUM ANALYZE" >/dev/null
# Fingerprint of every group's resolved state before anything is compressed.
q -c "CALL sc_test.snapshot()" >/dev/null || die "snapshot"
q -c "SET synapse_compress.chunk_pause = 0" -c "CALL compress_database(max_chunks => 3)" >/dev/null \
    || die "compress_database on $OLD_VERSION (log: $LOG)"
q -c "SELECT synapse_compress.pause()" >/dev/null || die "pause()"
check "$OLD_VERSION: some chunks done, rooms left, paused" test "$(q -c "
    SELECT (SELECT count(*) FROM synapse_compress.runs WHERE chunks = 3) = 1
       AND (SELECT count(*) FROM state_compressor_progress) > 0
       AND (SELECT count(*) FROM state_compressor_state) > 0
       AND (SELECT count(*) FROM synapse_compress.room_queue WHERE pending_groups > 0) > 0
       AND (SELECT paused FROM synapse_compress.control)")" = t

# What must survive, each table in a stable order. Add new bookkeeping tables here.
SAVED="synapse_compress.room_queue synapse_compress.runs synapse_compress.control
       state_compressor_state state_compressor_progress state_compressor_total_progress"
# The old version's columns of each: an update may add columns, never lose what was there.
declare -A COLS
for t in $SAVED; do
    COLS[$t]=$(q -c "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                     WHERE attrelid = '$t'::regclass AND attnum > 0 AND NOT attisdropped") \
        || die "reading the columns of $t"
done
record() {  # record OUTDIR
    mkdir -p "$1"
    local t
    for t in $SAVED; do
        q -c "COPY (SELECT ${COLS[$t]} FROM $t ORDER BY 1, 2) TO STDOUT" >"$1/$t" || return 1
    done
}
record "$DIR.before" || die "recording the $OLD_VERSION rows"

# ---- 3. this build over it -----------------------------------------------------------
install_files "$NEW_STAGE"
check "$OLD_VERSION's SQL script still beside $NEW_VERSION's files" \
    test -f "$EXTDIR/synapse_compress--$OLD_VERSION.sql"
bash scripts/cluster.sh restart "$DIR" >>"$LOG" 2>&1 || die "restart with the new library"
check "still $OLD_VERSION before the update" \
    test "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'synapse_compress'")" = "$OLD_VERSION"
check "ALTER EXTENSION synapse_compress UPDATE" q -c "ALTER EXTENSION synapse_compress UPDATE"
check "now $NEW_VERSION" \
    test "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'synapse_compress'")" = "$NEW_VERSION"

# ---- 4. nothing lost -----------------------------------------------------------------
record "$DIR.after" || die "recording the rows after the update"
for t in $SAVED; do
    check "$t unchanged by the update ($(wc -l <"$DIR.before/$t") rows)" \
        diff -u "$DIR.before/$t" "$DIR.after/$t"
done
check "still paused" test "$(q -c "SELECT paused FROM synapse_compress.status")" = t
TOOL_TABLES="'state_compressor_state', 'state_compressor_progress', 'state_compressor_total_progress'"
members_sql="SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
    WHERE e.extname = 'synapse_compress' AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass
      AND d.objid IN (SELECT oid FROM pg_class WHERE relname IN ($TOOL_TABLES))"
check "state_compressor_* tables are not members of the extension" test "$(q -c "$members_sql")" = 0

# The upgraded extension is the one a fresh install creates: its member objects, each
# function's signature, result and body, each view's query, each table's columns.
# (The state_compressor_* tables are left out: they are not the extension's.)
schema_sql="
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) || coalesce(' ' || (
    CASE d.classid
    WHEN 'pg_proc'::regclass THEN (SELECT p.prokind::text || ' ' || pg_get_function_identity_arguments(p.oid)
        || ' -> ' || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proparallel::text
        || ' ' || coalesce(array_to_string(p.proconfig, ','), '') || ' ' || md5(p.prosrc)
        FROM pg_proc p WHERE p.oid = d.objid)
    WHEN 'pg_class'::regclass THEN (SELECT c.relkind::text || ' ' || coalesce(md5(pg_get_viewdef(c.oid)), '')
        || ' ' || (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod)
                   || CASE WHEN a.attnotnull THEN '!' ELSE '' END
                   || coalesce('=' || pg_get_expr(ad.adbin, ad.adrelid), ''), ',' ORDER BY a.attnum)
                   FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
        FROM pg_class c WHERE c.oid = d.objid)
    END), '')
FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
WHERE e.extname = 'synapse_compress' AND d.deptype = 'e'
  AND NOT (d.classid = 'pg_class'::regclass
           AND d.objid IN (SELECT oid FROM pg_class WHERE relname IN ($TOOL_TABLES)))
ORDER BY 1"
q -c "$schema_sql" >"$DIR.schema-upgraded" || fail "listing the upgraded schema (log: $LOG)"
bash scripts/cluster.sh createdb "$DIR" "$PORT" fresh >>"$LOG" 2>&1 || die "createdb fresh"
QDB=fresh q -c "CREATE EXTENSION synapse_compress" >/dev/null || die "CREATE EXTENSION (fresh $NEW_VERSION)"
QDB=fresh q -c "$schema_sql" >"$DIR.schema-fresh" || fail "listing the fresh schema (log: $LOG)"
check "upgraded schema = fresh $NEW_VERSION schema ($(wc -l <"$DIR.schema-fresh") objects)" \
    bash -c "[ -s '$DIR.schema-fresh' ] && diff -u '$DIR.schema-fresh' '$DIR.schema-upgraded'"
q -c "DROP DATABASE fresh" >/dev/null

# ---- 5. compress on ------------------------------------------------------------------
q -c "SELECT synapse_compress.resume()" >/dev/null
check "compress_database continues after the update" \
    q -c "SET synapse_compress.chunk_pause = 0" -c "CALL compress_database(max_chunks => 3)"
check "... its run recorded after the old runs" test "$(q -c "
    SELECT count(*) = 2 AND max(chunks) = 3 FROM synapse_compress.runs")" = t
check "every group's state kept" q -c "CALL sc_test.assert_same_state()"

# DROP EXTENSION leaves the existing tool's tables and their rows.
record "$DIR.dropped-before" || die "recording before DROP EXTENSION"
check "DROP EXTENSION synapse_compress" q -c "DROP EXTENSION synapse_compress"
for t in state_compressor_state state_compressor_progress state_compressor_total_progress; do
    check "$t kept by DROP EXTENSION, with its rows" \
        diff -u "$DIR.dropped-before/$t" <(q -c "COPY (SELECT * FROM $t ORDER BY 1, 2) TO STDOUT")
done
check "CREATE EXTENSION adopts them" q -c "CREATE EXTENSION synapse_compress"
check "state_compressor_* tables still not members" test "$(q -c "$members_sql")" = 0
check "compress_database finishes every room" \
    q -c "SET synapse_compress.chunk_pause = 0" -c "CALL compress_database()"
check "nothing pending, each room's progress at its last group" test "$(q -c "
    SELECT (SELECT rooms_pending FROM synapse_compress.status) = 0
       AND NOT EXISTS (SELECT 1 FROM state_groups g
                       LEFT JOIN state_compressor_progress p USING (room_id)
                       GROUP BY g.room_id HAVING max(g.id) IS DISTINCT FROM max(p.last_compressed))")" = t
check "every group's state kept" q -c "CALL sc_test.assert_same_state()"
check "the tree is well formed" q -c "CALL sc_test.assert_tree(175)"

rm -rf "$DIR.before" "$DIR.after" "$DIR.dropped-before" "$DIR.schema-upgraded" "$DIR.schema-fresh"
echo "upgrade: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
