#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (CI or dev); every step is skipped
# when already satisfied, so a re-run takes about a second.
#   scripts/setup.sh           everything
#   scripts/setup.sh fixture   only the Synapse schema fixture (.cache/synapse/schema.sql)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1
SYNAPSE_VERSION=1.163.2
# Pin one exact wheel (platform-independent download, checked by hash) so the
# fixture is reproducible; the schema files are the same in every wheel.
SYNAPSE_WHEEL=matrix_synapse-$SYNAPSE_VERSION-cp310-abi3-manylinux_2_28_x86_64.whl
SYNAPSE_SHA256=6cecae98b6e1b55dd68e689329cf1677cba103d4160c320f04b26bd081ff1558
CACHE=$ROOT/.cache/synapse

SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

apt_packages() {
    local pkgs=(postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo)
    # The fixture step needs python3, and pip until the wheel is cached (both absent
    # from minimal Debian images).
    command -v python3 >/dev/null || pkgs+=(python3)
    [ -f "$CACHE/$SYNAPSE_WHEEL" ] || python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
    local p missing=()
    for p in "${pkgs[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then echo "ok: apt packages"; return; fi
    echo "installing: apt packages: ${missing[*]}"
    $SUDO apt-get update -qq </dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null >/dev/null
}

cargo_pgrx() {
    command -v cargo >/dev/null || { echo "error: cargo not found (install Rust first)" >&2; exit 1; }
    if [ "$(cargo pgrx --version 2>/dev/null)" = "cargo-pgrx $PGRX_VERSION" ]; then
        echo "ok: cargo-pgrx $PGRX_VERSION"; return
    fi
    # pgrx 0.19 needs a newer Rust than ours: pin exactly (takes ~4 minutes).
    echo "installing: cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked </dev/null
}

pgrx_init() {
    local cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml
    if grep -qx "pg15 = \"$PG_CONFIG\"" "$cfg" 2>/dev/null; then echo "ok: pgrx init (pg15)"; return; fi
    # Only pg15, using the system server: a bare `cargo pgrx init` would download
    # and compile every PostgreSQL version.
    echo "installing: cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG" </dev/null
}

fixture() {
    local wheel=$CACHE/$SYNAPSE_WHEEL out=$CACHE/schema.sql gen=$ROOT/scripts/synapse_schema.py
    mkdir -p "$CACHE"
    if [ -f "$wheel" ]; then
        echo "ok: synapse wheel"
    else
        echo "installing: synapse $SYNAPSE_VERSION wheel"
        # --platform etc. select the pinned wheel whatever the local Python is.
        python3 -m pip download -q --no-deps --only-binary=:all: --dest "$CACHE" \
            --platform manylinux_2_28_x86_64 --python-version 3.10 --implementation cp --abi abi3 \
            "matrix-synapse==$SYNAPSE_VERSION" </dev/null
        echo "$SYNAPSE_SHA256  $wheel" | sha256sum -c --quiet - \
            || { rm -f "$wheel"; echo "error: synapse wheel checksum mismatch" >&2; exit 1; }
    fi
    if [ -f "$out" ] && [ "$out" -nt "$wheel" ] && [ "$out" -nt "$gen" ]; then
        echo "ok: synapse schema fixture"
    else
        echo "installing: synapse schema fixture $out"
        python3 "$gen" "$wheel" "$out"
    fi
}

case "${1:-all}" in
    all) apt_packages; cargo_pgrx; pgrx_init; fixture ;;
    fixture) fixture ;;
    *) echo "usage: $0 [fixture]" >&2; exit 2 ;;
esac
