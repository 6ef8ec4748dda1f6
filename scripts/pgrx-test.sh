#!/usr/bin/env bash
# Run the #[pg_test]s with cargo pgrx on the major of PG_CONFIG (default Debian's 15;
# cargo-pgrx takes that major's pg_config from ~/.pgrx/config.toml, see setup.sh).
# As root, initdb/postgres must run as the postgres user: pgrx's --runas does that,
# given a data dir postgres can write (PGRX_TEST_DIR, one per major by default).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg-major.sh
echo "== #[pg_test]s on $("$PG_CONFIG" --version)"
args=(test "pg$PG_MAJOR" "${PG_FEATURES[@]}")
if [ "$(id -u)" = 0 ]; then
    dir=${PGRX_TEST_DIR:-/tmp/synapse_compress/pgrx-test-pg$PG_MAJOR}
    mkdir -p "$dir"
    chmod a+rx "$(dirname "$dir")"
    chown -R postgres:postgres "$dir"
    # The test cluster loads the extension from target/: postgres must read it.
    chmod a+rx "$PWD" "$PWD/target" 2>/dev/null || true
    exec cargo pgrx "${args[@]}" --runas postgres --pgdata "$dir/data"
fi
exec cargo pgrx "${args[@]}"
