#!/usr/bin/env bash
# Run the #[pg_test]s with cargo pgrx. As root, initdb/postgres must run as the
# postgres user: pgrx's --runas does that, given a data dir postgres can write.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    dir=/tmp/synapse_compress/pgrx-test
    mkdir -p "$dir"
    chmod a+rx /tmp/synapse_compress
    chown -R postgres:postgres "$dir"
    # The test cluster loads the extension from target/: postgres must read it.
    chmod a+rx "$PWD" "$PWD/target" 2>/dev/null || true
    exec cargo pgrx test pg15 --runas postgres --pgdata "$dir/data"
fi
exec cargo pgrx test pg15
