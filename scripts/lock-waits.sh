#!/usr/bin/env bash
# How long Synapse's writers wait on us while a run goes on (issue 10's figures).
#   scripts/lock-waits.sh [SCALE]        (default 1: the ~74,000-group headline room)
# pgbench plays Synapse's two lock-taking transactions on random groups of the room,
# 2 clients, each transaction rolled back so the data stays as generated:
#   new_group: BEGIN; SELECT ... FOR KEY SHARE on the predecessor (as Synapse does
#              before inserting a group on it); ROLLBACK
#   deletion:  BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ... FOR UPDATE of two
#              groups (Synapse's deletion loop); ROLLBACK
# first idle (10 s), then for 30 s while CALL compress_database() runs (chunk_pause 0, default
# lock_timeout), and prints p50 / p99 / max latency of each.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCALE=${1:-1}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
BIN=$("$PG_CONFIG" --bindir)
DIR=${LOCK_WAITS_DIR:-/tmp/synapse_compress/lock-waits}
PORT=${LOCK_WAITS_PORT:-55446}
DB=synapse
GEN=${GEN:-$ROOT/target/release/synapse-compress-gen}
WORK=$(mktemp -d)
chmod a+rx "$WORK"
mkdir -p /tmp/synapse_compress && chmod a+rx /tmp/synapse_compress

bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1 || true
bash scripts/cluster.sh start "$DIR" "$PORT" "shared_buffers = '512MB'" >/dev/null
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
q() { psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }

bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null
"$GEN" --preset headline --scale "$SCALE" --seed 61 2>/dev/null | psql -X -q -d "$DB" >/dev/null
psql -X -q -d "$DB" -c "CREATE EXTENSION synapse_compress" -c "VACUUM ANALYZE" >/dev/null
read -r lo hi <<<"$(q "SELECT min(id), max(id) FROM state_groups" | tr '|' ' ')"
echo "room: $(q "SELECT count(*) FROM state_groups") groups, $(q "SELECT count(*) FROM state_groups_state") rows; lock_timeout $(q "LOAD 'synapse_compress'; SHOW synapse_compress.lock_timeout" | tail -n 1)"

cat >"$WORK/new_group.sql" <<SQL
\set g random($lo, $hi)
BEGIN;
SELECT id FROM state_groups WHERE id = :g FOR KEY SHARE;
ROLLBACK;
SQL
cat >"$WORK/deletion.sql" <<SQL
\set g random($lo, $((hi - 1)))
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT id FROM state_groups WHERE id IN (:g, :g + 1) FOR UPDATE;
ROLLBACK;
SQL

# Per-transaction latency logs (column 3, microseconds) of both scripts, $1 seconds.
measure() {
    local phase=$1 secs=$2
    rm -f "$WORK"/log.*
    (cd "$WORK" && "$BIN/pgbench" -n -c 2 -j 2 -T "$secs" -l --log-prefix=log \
        -f new_group.sql -f deletion.sql "$DB" >"$WORK/pgbench.$phase" 2>&1) || {
        cat "$WORK/pgbench.$phase" >&2; return 1; }
    # column 3: latency in microseconds; column 4: the script (0 new_group, 1 deletion)
    local n name
    for n in 0 1; do
        name=$([ "$n" = 0 ] && echo new_group || echo deletion)
        cat "$WORK"/log.* | awk -v s="$n" '$4 == s { print $3 / 1000.0 }' | sort -n | awk \
            -v phase="$phase" -v name="$name" '
            { v[NR] = $1 }
            END {
                if (NR == 0) exit
                p99 = int(NR * 0.99) + 1; if (p99 > NR) p99 = NR
                printf "%-8s %-10s %7d tx   p50 %8.2f ms   p99 %8.2f ms   max %8.2f ms\n",
                       phase, name, NR, v[int(NR * 0.5) + 1], v[p99], v[NR]
            }'
    done
}

measure idle 10
psql -X -q -d "$DB" -c "SET synapse_compress.chunk_pause = 0" -c "CALL compress_database()" \
    >"$WORK/run.log" 2>&1 &
run=$!
sleep 1
measure during 30
wait "$run" || { cat "$WORK/run.log" >&2; exit 1; }
q "SELECT 'run: ' || chunks || ' chunks, ' || errors || ' errors, rows ' || rows_before || ' -> ' || rows_after
          || ', ' || round(extract(epoch FROM finished_at - started_at)::numeric, 1) || ' s'
   FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1"
