#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests, demo and benchmark, of the server that
# PG_CONFIG belongs to (default: Debian's 15).
#   cluster.sh start    DIR PORT [extra postgresql.conf lines...]
#   cluster.sh stop     DIR
#   cluster.sh restart  DIR
#   cluster.sh env      DIR PORT          # eval "$(scripts/cluster.sh env DIR PORT)"
#   cluster.sh createdb DIR PORT NAME     # fresh database with the genuine Synapse schema
set -euo pipefail

BIN=$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCHEMA="$ROOT/.cache/synapse/schema.sql"
TEMPLATE=synapse_template

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# initdb, pg_ctl and postgres refuse to run as root: use the postgres OS user then
# (runuser needs no sudoers setup). cd / so it never complains about root's cwd.
as_pg() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# Absolute path (the socket directory and pg_ctl -D must not depend on the cwd).
abs() { realpath -m -- "$1"; }

running() { [ -f "$1/PG_VERSION" ] && as_pg "$BIN/pg_ctl" status -D "$1" >/dev/null 2>&1; }

start() {
    local dir port
    dir=$(abs "$1") port=$2; shift 2
    if running "$dir"; then echo "ok: cluster $dir already running"; return; fi
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        if [ "$(id -u)" = 0 ]; then
            # postgres must own DIR and be able to reach it through its parent.
            chown postgres:postgres "$dir"
            if ! as_pg test -x "$(dirname "$dir")"; then
                echo "note: chmod a+x $(dirname "$dir") so user postgres can reach $dir"
                chmod a+x "$(dirname "$dir")"
            fi
            as_pg test -w "$dir" || die "user postgres cannot write $dir (use a DIR under /tmp)"
        fi
        # --no-sync: throwaway cluster, durability of initdb's files is irrelevant.
        local out  # initdb wants an empty DIR: keep its chatter in memory
        out=$(as_pg "$BIN/initdb" -D "$dir" --auth=trust -U postgres --encoding=UTF8 --locale=C \
            --no-sync 2>&1) || { echo "$out" >&2; die "initdb failed"; }
        echo "include_if_exists = 'cluster.conf'" >>"$dir/postgresql.conf"
    fi
    # Our settings live in cluster.conf, rewritten on each start, so a later start
    # with another PORT or extra lines takes effect instead of piling up.
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        for line in "$@"; do echo "$line"; done
    } >"$dir/cluster.conf"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir/cluster.conf"
    as_pg "$BIN/pg_ctl" start -D "$dir" -l "$dir/server.log" -w -t 60 >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2; die "server failed to start"; }
    echo "ok: cluster $dir started on port $port"
}

stop() {
    local dir; dir=$(abs "$1")
    if running "$dir"; then
        as_pg "$BIN/pg_ctl" stop -D "$dir" -m fast -w >/dev/null
        echo "ok: cluster $dir stopped"
    else
        echo "ok: cluster $dir not running"
    fi
}

restart() {
    local dir; dir=$(abs "$1")
    [ -f "$dir/PG_VERSION" ] || die "no cluster in $dir"
    # Keeps the port and extra lines of the last start (cluster.conf); starts a
    # stopped cluster too.
    ! running "$dir" || as_pg "$BIN/pg_ctl" stop -D "$dir" -m fast -w >/dev/null
    as_pg "$BIN/pg_ctl" start -D "$dir" -l "$dir/server.log" -w -t 60 >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2; die "server failed to restart"; }
    echo "ok: cluster $dir restarted"
}

createdb() {
    local dir port name sum have
    dir=$(abs "$1") port=$2 name=$3
    running "$dir" || die "cluster $dir is not running (cluster.sh start $1 $port)"
    [ -f "$SCHEMA" ] || bash "$ROOT/scripts/setup.sh"
    psql_() {
        PGOPTIONS='-c client_min_messages=warning' \
            "$BIN/psql" -h "$dir" -p "$port" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"
    }
    # One template per cluster, cloned per database (a clone takes ~0.1 s, loading
    # the schema ~0.5 s). Its comment holds the schema's checksum so a regenerated
    # schema.sql rebuilds it. flock serialises parallel callers.
    sum=$(sha256sum "$SCHEMA" | cut -d' ' -f1)
    exec 9>"$dir/.template.lock"
    flock 9
    have=$(psql_ -c "SELECT coalesce(shobj_description(oid, 'pg_database'), '-')
                     FROM pg_database WHERE datname = '$TEMPLATE'")
    if [ "$have" != "$sum" ]; then
        echo "building template $TEMPLATE"
        # Load into a scratch database and rename, so a failed load never leaves a
        # half-built template behind.
        psql_ -c "DROP DATABASE IF EXISTS ${TEMPLATE}_build" \
              -c "CREATE DATABASE ${TEMPLATE}_build"
        "$BIN/psql" -h "$dir" -p "$port" -U postgres -d "${TEMPLATE}_build" -X -q \
            -v ON_ERROR_STOP=1 -f "$SCHEMA" >/dev/null
        # ALLOW_CONNECTIONS false: a stray session would make CREATE ... TEMPLATE fail.
        [ -z "$have" ] || psql_ -c "ALTER DATABASE $TEMPLATE IS_TEMPLATE false"
        psql_ -c "DROP DATABASE IF EXISTS $TEMPLATE" \
              -c "ALTER DATABASE ${TEMPLATE}_build RENAME TO $TEMPLATE" \
              -c "COMMENT ON DATABASE $TEMPLATE IS '$sum'" \
              -c "ALTER DATABASE $TEMPLATE WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
    fi
    # Always a fresh database: drop any previous one of that name (throwaway cluster).
    # (stdin, not -c: psql interpolates :"name" only there; it quotes the identifier)
    psql_ -v name="$name" <<SQL
DROP DATABASE IF EXISTS :"name" WITH (FORCE);
CREATE DATABASE :"name" TEMPLATE $TEMPLATE;
SQL
    flock -u 9
    echo "ok: database $name created (Synapse schema) in $dir"
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in
    start)    [ $# -ge 2 ] || usage; start "$@" ;;
    stop)     [ $# -eq 1 ] || usage; stop "$1" ;;
    restart)  [ $# -eq 1 ] || usage; restart "$1" ;;
    env)      [ $# -eq 2 ] || usage; printf 'export PGHOST=%q PGPORT=%q PGUSER=postgres\n' "$(abs "$1")" "$2" ;;
    createdb) [ $# -eq 3 ] || usage; createdb "$@" ;;
    *)        usage ;;
esac
