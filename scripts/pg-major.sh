# Sourced by scripts: PG_CONFIG (default Debian's 15) and PG_MAJOR, the server's major
# version from `pg_config --version` ("PostgreSQL 16.2" -> 16), which names the Cargo
# feature (pg16) the extension is built with, as PGXS and pgrx do.
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_MAJOR=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]\{2,\}\).*/\1/p')
case "$PG_MAJOR" in
    14 | 15 | 16 | 17 | 18) ;;
    *) echo "error: $PG_CONFIG: PostgreSQL major '${PG_MAJOR}' not supported (14 to 18)" >&2; exit 1 ;;
esac
# The cargo arguments that build for it.
PG_FEATURES=(--no-default-features --features "pg$PG_MAJOR")
