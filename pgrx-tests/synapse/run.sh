#!/usr/bin/env bash
# End-to-end test against a real Synapse 1.163.2 (issue 4, item 5):
#   a. drive state changes through Synapse's client API; record every state group's
#      resolved state and, through the API, the state and members at sampled events;
#   b. compress every room again and again while Synapse keeps writing state and
#      deletes purged state groups (purge-history admin API);
#   c. restart Synapse (its caches never invalidate) and check every surviving group
#      resolves identically and the API returns the same state and members;
#   d. purge a compressed room's history: Synapse's deletion loop de-deltas the
#      surviving children of the groups it deletes; the next compress_database run
#      brings the rows back down (src/revisit.rs), every group's state kept;
#   e. no errors in Synapse's log.
# Needs the extension installed (make install) and Synapse's venv (set up here).
#   SYNAPSE_E2E_PRELOAD=1 bash pgrx-tests/synapse/run.sh   # library preloaded
# Logs: "$SYNAPSE_E2E_DIR-logs" (/tmp/synapse_compress/synapse-e2e-logs). Exits nonzero on failure.
set -euo pipefail
# shellcheck source=pgrx-tests/env.sh
source "$(dirname "$0")/../env.sh"
HERE=pgrx-tests/synapse
DIR=${SYNAPSE_E2E_DIR:-/tmp/synapse_compress/synapse-e2e}
PG_PORT=${SYNAPSE_E2E_PG_PORT:-55441}
HS_PORT=${SYNAPSE_E2E_PORT:-18448}
LOGS=$DIR-logs
HS_DIR=$LOGS/hs            # Synapse's config, signing key, media store
HS_LOG=$LOGS/homeserver.log
DB=synapse
T0=$(date +%s)

log() { echo "[$(date +%H:%M:%S)] $*"; }
die() { log "FAIL: $*"; exit 1; }

PY=$(bash scripts/setup-synapse.sh python)

mkdir -p "$LOGS"
# A Synapse left over by an interrupted run of this test holds the port: stop it
# (only if the pid we recorded is still a homeserver using our config).
stop_synapse() {
    local pid
    pid=$(cat "$LOGS/synapse.pid" 2>/dev/null) || return 0
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$HS_DIR/homeserver.yaml"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$LOGS/synapse.pid"
}
stop_synapse
rm -rf "$LOGS"
mkdir -p "$HS_DIR/media"

cleanup() {
    stop_synapse
    bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so a kill or Ctrl-C still runs cleanup

# Use the preferred port if free, else any free one.
HS_PORT=$("$PY" - "$HS_PORT" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
)

# ---- PostgreSQL: our own cluster (initdb --locale=C, UTF8: what Synapse requires),
# an empty database owned by Synapse's role; Synapse creates its schema itself.
# SYNAPSE_E2E_PRELOAD=1: the library in shared_preload_libraries (worker off), as a
# server set up for the background worker has it.
conf=()
[ "${SYNAPSE_E2E_PRELOAD:-0}" = 1 ] && conf+=("shared_preload_libraries = 'synapse_compress'" "synapse_compress.workers = 0")
bash scripts/cluster.sh stop "$DIR" >/dev/null  # settings of a previous run must not linger
bash scripts/cluster.sh start "$DIR" "$PG_PORT" "${conf[@]}" >/dev/null
eval "$(bash scripts/cluster.sh env "$DIR" "$PG_PORT")"
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DROP DATABASE IF EXISTS $DB WITH (FORCE);
DROP ROLE IF EXISTS synapse;
CREATE ROLE synapse LOGIN;
CREATE DATABASE $DB OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
SQL

# ---- Synapse config and signing key.
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
fill() {
    sed -e "s|@HS_DIR@|$HS_DIR|g" -e "s|@HS_PORT@|$HS_PORT|g" -e "s|@PG_PORT@|$PG_PORT|g" \
        -e "s|@SECRET@|$SECRET|g" -e "s|@LOG_FILE@|$HS_LOG|g" "$1"
}
fill "$HERE/homeserver.yaml.in" >"$HS_DIR/homeserver.yaml"
fill "$HERE/log.config.in" >"$HS_DIR/log.config"
"$PY" -m synapse.app.homeserver -c "$HS_DIR/homeserver.yaml" --generate-keys \
    >"$LOGS/generate-keys.log" 2>&1 || { cat "$LOGS/generate-keys.log"; die "signing key"; }

start_synapse() {
    # Synapse writes its pid_file only when daemonizing: keep the pid ourselves.
    (cd "$HS_DIR" && exec "$PY" -m synapse.app.homeserver -c "$HS_DIR/homeserver.yaml" \
        >>"$LOGS/synapse.stdout" 2>&1 </dev/null) &
    echo $! >"$LOGS/synapse.pid"
    local i
    for i in $(seq 240); do
        kill -0 "$(cat "$LOGS/synapse.pid")" 2>/dev/null || break  # died during startup
        if "$PY" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)' \
                "http://127.0.0.1:$HS_PORT/health" >/dev/null 2>&1; then
            log "synapse up on 127.0.0.1:$HS_PORT after $((i / 2))s"; return
        fi
        sleep 0.5
    done
    tail -n 30 "$LOGS/synapse.stdout" "$HS_LOG" >&2 || true
    die "synapse did not answer /health (see $LOGS/synapse.stdout)"
}

export E2E_BASE_URL="http://127.0.0.1:$HS_PORT" E2E_SECRET=$SECRET E2E_STATE=$LOGS/state.json E2E_DB=$DB
# Also kept in drive.log, so the failures can be repeated last (what CI shows is the tail).
drive() { "$PY" "$HERE/drive.py" "$@" | tee -a "$LOGS/drive.log"; }

log "starting synapse (first start creates its schema)"
start_synapse
# Synapse has created its tables: now the extension and the test helpers.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/e2e/lib.sql
# Synapse's background updates of a new database finish before anything is sent (see
# homeserver.yaml.in: one of them logs an ERROR when room state changes under it).
for i in $(seq 240); do
    [ "$(psql -X -At -d "$DB" -c "SELECT count(*) FROM background_updates")" = 0 ] && break
    [ "$i" = 240 ] && die "Synapse's background updates did not finish within 120 s"
    sleep 0.5
done
log "synapse's background updates done"

status=0
log "== populate"
drive populate || die "populate failed"
log "== (a) record"
drive record || die "record failed"
log "== (b) compress while Synapse writes and deletes"
drive stress || status=1
log "== (c) restart synapse, verify"
stop_synapse
start_synapse
drive verify || status=1
log "== (d) purge again: Synapse de-deltas, the next run re-compresses"
drive repurge || status=1
summary_line=$(drive summary 2>/dev/null || true)

# ---- (e) Synapse's log: any ERROR or traceback fails the test (none is expected:
# no federation, no outside traffic; a compression bug would show as a failed read
# or persist of a state group).
errors=$(grep -nE ' - (ERROR|CRITICAL) - |Traceback' "$HS_LOG" "$LOGS/synapse.stdout" || true)
if [ -n "$errors" ]; then
    log "synapse log has $(wc -l <<<"$errors") ERROR/Traceback lines:"
    head -n 40 <<<"$errors"
    status=1
else
    log "(e) synapse log: no ERROR/Traceback lines"
fi

secs=$(( $(date +%s) - T0 ))
if [ $status -ne 0 ]; then
    log "the failures above, again:"
    grep -h "FAIL: " "$LOGS/drive.log" | head -n 20 || true
fi
if [ $status -eq 0 ]; then
    echo "synapse-e2e: PASS in ${secs}s: $summary_line"
else
    echo "synapse-e2e: FAIL in ${secs}s: $summary_line (logs: $LOGS)"
fi
exit $status
