#!/usr/bin/env bash
# The packages of `make package` install, work and uninstall cleanly.
#   scripts/package-test.sh [deb] [tarball MAJOR]     (default: deb tarball 18)
# - deb: dist/postgresql-15-synapse-compress_<version>-1_<arch>.deb with `dpkg -i` into
#   the system PostgreSQL 15 (root). Any synapse_compress files already there (a
#   `make install`) are moved aside first, so only the package's files are used, and
#   put back at the end: the system is left as it was.
# - tarball MAJOR: dist/synapse-compress-<version>-pg<MAJOR>.tar.gz with its install.sh
#   into a private copy of that wheel's server (.cache/pg/MAJOR).
# Each: CREATE EXTENSION in a throwaway cluster, compress the biggest of some
# generated rooms, every group's state kept; then uninstall and check that none of
# the package's files is left. Prints "package: N passed, N failed" last.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
DIR=${PKG_DIR:-/tmp/synapse_compress/package}
PORT=${PKG_PORT:-55447}
GEN="$ROOT/target/release/synapse-compress-gen"
LOG=/tmp/synapse_compress/e2e-logs/package.log
mkdir -p /tmp/synapse_compress/e2e-logs && chmod a+rx /tmp/synapse_compress
: >"$LOG"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok     $*"; }
fail() { failed=$((failed + 1)); echo "FAILED $*"; }
check() { local name=$1; shift; if "$@" >>"$LOG" 2>&1; then ok "$name"; else fail "$name (log: $LOG)"; fi; }

# works WHAT: with PG_CONFIG's server (the package installed into it): a throwaway
# cluster, CREATE EXTENSION, a room compressed with every group's state kept.
works() {
    local what=$1 db=synapse room
    bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1
    rm -rf "$DIR"
    check "$what: cluster on $("$PG_CONFIG" --version)" bash scripts/cluster.sh start "$DIR" "$PORT" || return
    (
        eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
        export PATH="$("$PG_CONFIG" --bindir):$PATH"
        q() { psql -X -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
        bash scripts/cluster.sh createdb "$DIR" "$PORT" "$db" >>"$LOG" 2>&1 &&
        "$GEN" --preset headline --scale 0.02 --seed 71 | psql -X -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null &&
        "$GEN" --preset small --seed 72 --first-id 500000 | psql -X -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null
    ) >>"$LOG" 2>&1 || { fail "$what: database with generated rooms (log: $LOG)"; return; }
    eval "$(bash scripts/cluster.sh env "$DIR" "$PORT")"
    local psql=("$("$PG_CONFIG" --bindir)/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$db")
    # answers WANT PSQL-ARGS...: psql succeeds and prints exactly WANT.
    answers() { local want=$1 out; shift; out=$("${psql[@]}" "$@") && [ "$out" = "$want" ]; }
    check "$what: CREATE EXTENSION synapse_compress (version $VERSION)" \
        answers "$VERSION" -c "CREATE EXTENSION synapse_compress" -f pgrx-tests/e2e/lib.sql \
            -c "SELECT extversion FROM pg_extension WHERE extname = 'synapse_compress'"
    room=$("${psql[@]}" -c "SELECT room_id FROM state_groups GROUP BY 1 ORDER BY count(*) DESC LIMIT 1" 2>>"$LOG")
    check "$what: compress_room wrote, every group's state kept" \
        answers t -c "CALL sc_test.snapshot()" \
            -c "SELECT written AND rows_after < rows_before FROM compress_room('$room')" \
            -c "CALL sc_test.assert_same_state()"
    bash scripts/cluster.sh stop "$DIR" >/dev/null 2>&1
    rm -rf "$DIR"
}

# gone WHAT FILE...: none of the files exists any more.
gone() {
    local what=$1 f left=(); shift
    for f in "$@"; do [ ! -e "$f" ] || left+=("$f"); done
    check "$what: its files are gone" test ${#left[@]} -eq 0
    [ ${#left[@]} -eq 0 ] || printf '    left: %s\n' "${left[@]}"
}

# Files a `make install` had put where the .deb installs, kept aside during its test.
ASIDE=
restore_aside() {
    local f lib ext
    [ -n "$ASIDE" ] || return 0
    lib=$(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)
    ext=$(/usr/lib/postgresql/15/bin/pg_config --sharedir)/extension
    for f in "$ASIDE"/*; do
        [ -e "$f" ] || continue
        case "$f" in *.so) mv -f "$f" "$lib/" ;; *) mv -f "$f" "$ext/" ;; esac
    done
    rmdir "$ASIDE" && ASIDE=
}

test_deb() {
    local arch deb pkg f files=()
    arch=$(dpkg --print-architecture)
    pkg=postgresql-15-synapse-compress
    deb=$ROOT/dist/${pkg}_$VERSION-1_$arch.deb
    [ -f "$deb" ] || { fail "no $deb (make package)"; return; }
    [ "$(id -u)" = 0 ] || { fail "deb: needs root (dpkg -i)"; return; }
    echo "== .deb $(basename "$deb") ($(du -h "$deb" | cut -f1)) into the system PostgreSQL 15"
    export PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
    ASIDE=$(mktemp -d)
    for f in "$($PG_CONFIG --pkglibdir)"/synapse_compress* "$($PG_CONFIG --sharedir)"/extension/synapse_compress*; do
        [ -e "$f" ] && mv "$f" "$ASIDE/"
    done
    trap "dpkg -r $pkg >/dev/null 2>&1; restore_aside" EXIT
    check "deb: Depends: postgresql-15 ($(dpkg-deb -f "$deb" Depends))" \
        bash -c "dpkg-deb -f '$deb' Depends | grep -qE '^postgresql-15($|[ ,])'"
    check "deb: dpkg -i" dpkg -i "$deb"
    mapfile -t files < <(dpkg -L "$pkg" 2>/dev/null | while read -r f; do [ -f "$f" ] && echo "$f"; done)
    printf '%s\n' "${files[@]}" >"$DIR.files"
    check "deb: installs the library, the control file and the SQL script (${#files[@]} files)" \
        bash -c "grep -q '/lib/synapse_compress.so$' '$DIR.files' &&
                 grep -q '/extension/synapse_compress.control$' '$DIR.files' &&
                 grep -q '/extension/synapse_compress--$VERSION.sql$' '$DIR.files'"
    rm -f "$DIR.files"
    works deb
    check "deb: dpkg -r" dpkg -r "$pkg"
    check "deb: dpkg no longer has it installed" \
        test "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed
    gone deb "${files[@]}"
    restore_aside
    trap - EXIT
}

test_tarball() {
    local major=$1 tgz tree unpack pgc f files=()
    tgz=$ROOT/dist/synapse-compress-$VERSION-pg$major.tar.gz
    [ -f "$tgz" ] || { fail "no $tgz (make package)"; return; }
    [ -d "$ROOT/.cache/pg/$major" ] || { fail "no PostgreSQL $major in .cache/pg (make setup)"; return; }
    echo "== tarball $(basename "$tgz") ($(du -h "$tgz" | cut -f1)) into a copy of PostgreSQL $major"
    tree=$DIR.pg$major unpack=$(mktemp -d)
    rm -rf "$tree" && cp -a "$ROOT/.cache/pg/$major" "$tree"
    pgc=$tree/pgserver/pginstall/bin/pg_config
    export PG_CONFIG=$pgc
    check "tarball pg$major: unpack and install.sh" \
        bash -c "tar -xzf '$tgz' -C '$unpack' && sh '$unpack/synapse-compress-$VERSION-pg$major/install.sh' '$pgc'"
    for f in "$unpack"/*/lib/* "$unpack"/*/extension/*; do
        case "$f" in */lib/*) files+=("$("$pgc" --pkglibdir)/${f##*/}") ;;
                     *) files+=("$("$pgc" --sharedir)/extension/${f##*/}") ;; esac
    done
    works "tarball pg$major"
    rm -f "${files[@]}"
    gone "tarball pg$major (rm of its files)" "${files[@]}"
    rm -rf "$tree" "$unpack"
}

[ -x "$GEN" ] || { echo "no $GEN (make build)" >&2; exit 1; }
[ $# -gt 0 ] || set -- deb tarball 18
while [ $# -gt 0 ]; do
    case "$1" in
        deb) test_deb; shift ;;
        tarball) test_tarball "$2"; shift 2 ;;
        *) echo "usage: $0 [deb] [tarball MAJOR]" >&2; exit 2 ;;
    esac
done
echo "package: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
