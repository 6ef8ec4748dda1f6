#!/usr/bin/env bash
# The main job, end to end, on a throwaway cluster: a Synapse database with the
# genuine schema, one generated room shaped like synapse_auto_compressor's headline
# room, compressed by compress_room (dry run, then for real).
#   SCALE=0.2 make demo     # a smaller room
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# psql of the server PG_CONFIG belongs to (default: Debian's 15).
PATH="$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir):$PATH"
DIR=${DEMO_DIR:-/tmp/synapse_compress/demo}
PORT=${DEMO_PORT:-55433}
SCALE=${SCALE:-1}
mkdir -p /tmp/synapse_compress && chmod a+rx /tmp/synapse_compress

bash scripts/cluster.sh start "$DIR" "$PORT"
eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
bash scripts/cluster.sh createdb "$DIR" "$PORT" synapse >/dev/null
psql() { command psql -X -v ON_ERROR_STOP=1 -d synapse "$@"; }

echo "== generating a Synapse room (headline preset, scale $SCALE)"
t0=$(date +%s)
target/release/synapse-compress-gen --preset headline --scale "$SCALE" --seed 1 | psql -q >/dev/null
psql -q -c "VACUUM ANALYZE"
echo "   loaded in $(( $(date +%s) - t0 ))s"

sizes() {
    psql -c "SELECT (SELECT count(*) FROM state_groups) AS state_groups,
                    (SELECT count(*) FROM state_groups_state) AS state_rows,
                    pg_size_pretty(pg_total_relation_size('state_groups_state')) AS state_groups_state_size"
}
echo "== before"
sizes
ROOM=$(psql -Atc "SELECT room_id FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")

psql -q -c "CREATE EXTENSION IF NOT EXISTS synapse_compress"
echo "== SELECT * FROM compress_room('$ROOM', dry_run => true);"
psql -x -c "SELECT * FROM compress_room('$ROOM', dry_run => true)"
echo "== SELECT * FROM compress_room('$ROOM');"
# One session, its backend's private memory sampled while it compresses.
peak=$(mktemp) stop=$(mktemp -u)
psql -x <<SQL
SELECT pg_backend_pid() AS pid \\gset
\\setenv BACKEND_PID :pid
\\! bash scripts/peak-rss.sh \$BACKEND_PID $peak $stop &
SELECT * FROM compress_room('$ROOM');
\\! touch $stop
SQL
echo "   backend peak private memory (RssAnon) during compress_room: $(( $(cat "$peak") / 1024 )) MB"
rm -f "$peak" "$stop"
echo "== after (VACUUM FULL state_groups_state to give the space back to the OS)"
psql -q -c "VACUUM FULL state_groups_state"
sizes
cat <<MSG

The cluster is still running. Look around with:
    psql -h $DIR -p $PORT -U postgres synapse
Stop it with:
    bash scripts/cluster.sh stop $DIR
MSG
