#!/usr/bin/env bash
# Idempotent: a virtualenv with the pinned Synapse and its PostgreSQL driver, for the
# end-to-end test against a real Synapse (pgrx-tests/synapse/run.sh). Takes well under
# a second when already installed.
#   scripts/setup-synapse.sh          install (or check) the venv
#   scripts/setup-synapse.sh python   print the venv's python path (after installing)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYNAPSE_VERSION=1.163.2
VENV=$ROOT/.cache/synapse-venv
PY=$VENV/bin/python
# A stamp holding exactly what was installed: a changed pin reinstalls.
STAMP=$VENV/.installed
WANT="matrix-synapse==$SYNAPSE_VERSION psycopg2-binary"

SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

apt_packages() {
    # python3-venv: minimal Debian images lack ensurepip, so `python3 -m venv` fails.
    local pkgs=(python3 python3-venv) p missing=()
    for p in "${pkgs[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing: apt packages: ${missing[*]}"
    $SUDO apt-get update -qq </dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null >/dev/null
}

install() {
    if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
        echo "ok: synapse venv ($SYNAPSE_VERSION)"; return
    fi
    apt_packages
    echo "installing: $WANT into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip </dev/null
    # Binary wheels only: psycopg2 from source would need a compiler and libpq-dev;
    # psycopg2-binary provides the same `psycopg2` module Synapse imports.
    "$PY" -m pip install -q --disable-pip-version-check --only-binary=:all: \
        "matrix-synapse==$SYNAPSE_VERSION" psycopg2-binary </dev/null
    "$PY" -c 'import synapse, psycopg2; print("synapse", synapse.__version__)'
    echo "$WANT" >"$STAMP"
}

case "${1:-install}" in
    install) install ;;
    python) install >&2; echo "$PY" ;;
    *) echo "usage: $0 [python]" >&2; exit 2 ;;
esac
