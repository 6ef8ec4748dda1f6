# Sourced by every script under pgrx-tests/: $ROOT is the repository (and the cwd),
# and the PostgreSQL of $PG_CONFIG (default the system 15) comes first on PATH, so
# psql, pg_ctl and the test tools are that major's. Each suite takes its cluster
# directory and port from its own env vars (E2E_DIR/E2E_PORT, ...); logs go next to
# the cluster directory ("$DIR-logs"), so suites run per major in separate dirs.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir) || { echo "pg_config failed: $PG_CONFIG" >&2; exit 1; }
export PATH="$PG_BIN:$PATH"
GEN="$ROOT/target/release/synapse-compress-gen"
