#!/usr/bin/env bash
# How long the background worker takes on a whole generated database, and what it does
# to Synapse's state reads meanwhile.
#   scripts/worker-bench.sh [SCALE]      (default 1: ~2,000 rooms + the ~74,000-group room)
# A preloaded throwaway cluster; the worker starts paused. Synapse's state read query
# (bg_updates.py `_get_state_groups_from_groups_txn`, PostgreSQL form) runs on 200
# random groups with pgbench, 2 clients: idle before, during the worker's run, and idle
# after. Prints median / p99 latencies and the run's figures.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCALE=${1:-1}
DIR=${WORKER_BENCH_DIR:-/tmp/synapse_compress/worker-bench}
PORT=${WORKER_BENCH_PORT:-55444}
DB=synapse
GEN="$ROOT/target/release/synapse-compress-gen"
# psql and pgbench of the server PG_CONFIG belongs to (default: Debian's 15).
PATH="$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir):$PATH"
PGBENCH=pgbench
WORK=$(mktemp -d)
mkdir -p /tmp/synapse_compress && chmod a+rx /tmp/synapse_compress

bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1 || true
rm -rf "$DIR"
bash scripts/cluster.sh start "$DIR" "$PORT" \
    "shared_preload_libraries = 'synapse_compress'" \
    "synapse_compress.database = '$DB'" \
    "synapse_compress.interval = 86400" \
    "shared_buffers = '512MB'" >/dev/null
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
q() { psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }

bash scripts/cluster.sh createdb "$DIR" "$PORT" "$DB" >/dev/null
"$GEN" --preset manyrooms --scale "$SCALE" --seed 51 2>/dev/null | psql -X -q -d "$DB" >/dev/null
"$GEN" --preset headline --scale "$SCALE" --seed 52 --first-id 5000000 2>/dev/null | psql -X -q -d "$DB" >/dev/null
psql -X -q -d "$DB" -c "BEGIN" -c "CREATE EXTENSION synapse_compress" \
    -c "SELECT synapse_compress.pause()" -c "COMMIT" -c "VACUUM ANALYZE" >/dev/null
read -r rooms groups rows <<<"$(q "SELECT count(DISTINCT room_id), count(*), (SELECT count(*) FROM state_groups_state) FROM state_groups" | tr '|' ' ')"
echo "database: $rooms rooms, $groups groups, $rows rows"

q "CREATE TABLE bench_sample AS SELECT row_number() OVER () AS n, id FROM
     (SELECT id FROM state_groups ORDER BY md5(id::text) LIMIT 200) s" >/dev/null
cat >"$WORK/read.sql" <<'SQL'
\set n random(1, 200)
WITH RECURSIVE sgs(state_group) AS (
    VALUES((SELECT id FROM bench_sample WHERE n = :n)::bigint)
    UNION ALL
    SELECT prev_state_group FROM state_group_edges e, sgs s
    WHERE s.state_group = e.state_group
)
SELECT DISTINCT ON (type, state_key) type, state_key, event_id
FROM state_groups_state
WHERE state_group IN (SELECT state_group FROM sgs)
ORDER BY type, state_key, state_group DESC;
SQL
# read PHASE SECONDS: pgbench with per-transaction logs; prints median and p99 in ms.
read_load() {
    rm -f "$WORK"/pgbench_log.*
    (cd "$WORK" && "$PGBENCH" -n -c 2 -j 2 -T "$2" -f read.sql -l "$DB" >/dev/null 2>&1)
    cat "$WORK"/pgbench_log.* | awk '{print $3 / 1000.0}' | sort -n |
        awk -v phase="$1" '{a[NR] = $1} END {
            printf "%-22s %7d reads   median %7.2f ms   p99 %7.2f ms\n", phase, NR, a[int(NR * 0.5) + 1], a[int(NR * 0.99) + 1] }'
}

read_load "idle, before" 15
q "SELECT synapse_compress.resume()" >/dev/null
start=$(date +%s.%N)
# Reads for as long as the run lasts (in slices, so the last one ends soon after it).
while [ "$(q "SELECT count(*) FROM synapse_compress.runs WHERE outcome <> 'running'")" = 0 ]; do
    read_load "during the worker's run" 10 >>"$WORK/during.txt"
done
end=$(date +%s.%N)
cat "$WORK/during.txt"
read_load "idle, after" 15
q "SELECT 'worker run: ' || outcome || ' in ' || round(extract(epoch FROM finished_at - started_at)::numeric, 1) || ' s; '
          || rooms || ' rooms, ' || chunks || ' chunks, ' || groups || ' groups, rows ' || rows_before || ' -> ' || rows_after
   FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1"
printf 'wall time from resume() to the end of the run: %.1f s (includes up to 10 s of the last read slice)\n' \
    "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')"
q "SELECT 'settings: chunk_size ' || current_setting('synapse_compress.chunk_size') || ', chunk_pause '
          || current_setting('synapse_compress.chunk_pause') || ', workers ' || current_setting('synapse_compress.workers')"
