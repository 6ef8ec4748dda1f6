#!/usr/bin/env bash
# Build the extension and install it into the PostgreSQL of PG_CONFIG.
#   PG_CONFIG=/path/to/pg_config scripts/install.sh [--debug]
# The major comes from `pg_config --version` and selects the Cargo feature (pgNN).
# Files are staged by `cargo pgrx package`, then moved into place with rename(2): a
# server already running the old library keeps its mapping of the old file instead
# of crashing on a file rewritten underneath it (`cargo pgrx install` copies in place).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=pg-major.sh
. "$ROOT/scripts/pg-major.sh"
cd "$ROOT"
mode=(); kind=release
if [ "${1:-}" = --debug ]; then mode=(--debug); kind=debug; fi
OUT="$ROOT/target/$kind/synapse_compress-pg$PG_MAJOR"
rm -rf "$OUT"
cargo pgrx package "${mode[@]}" "${PG_FEATURES[@]}" --pg-config "$PG_CONFIG" --out-dir "$OUT" >/dev/null
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
# Every staged file goes to the same absolute path on this machine.
(cd "$OUT" && find . -type f) | while read -r f; do
    dest=${f#.}
    $SUDO mkdir -p "$(dirname "$dest")"
    $SUDO cp "$OUT/$f" "$dest.new.$$"
    $SUDO mv -f "$dest.new.$$" "$dest"
done
echo "installed synapse_compress ($kind) for PostgreSQL $PG_MAJOR into $("$PG_CONFIG" --pkglibdir)"
