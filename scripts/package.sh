#!/usr/bin/env bash
# `make package`: installable builds in dist/, needing no Rust on the target.
#   scripts/package.sh [MAJOR...]      (default: 15 16 18, the majors with a server here)
# - 15 (Debian's server): dist/postgresql-15-synapse-compress_<version>-1_amd64.deb,
#   installing into /usr/lib/postgresql/15/lib and /usr/share/postgresql/15/extension,
#   Depends: postgresql-15. `apt install ./file.deb` or `dpkg -i`; `dpkg -r` removes it.
# - other majors (the wheels' relocatable servers):
#   dist/synapse-compress-<version>-pg<major>.tar.gz with lib/ (into
#   `pg_config --pkglibdir`) and extension/ (into `pg_config --sharedir`/extension),
#   and install.sh doing that for the pg_config given (or on PATH).
# Files are staged by `cargo pgrx package` (a fat-LTO release build per major; a
# major's build is reused when `make install` already built it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
DIST=$ROOT/dist
mkdir -p "$DIST"
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(15 16 18)

pg_config_of() {
    if [ "$1" = 15 ]; then echo /usr/lib/postgresql/15/bin/pg_config
    else echo "$ROOT/.cache/pg/$1/pgserver/pginstall/bin/pg_config"; fi
}

# stage MAJOR -> prints the staging dir (absolute paths of that server under it).
stage() {
    local out=$ROOT/target/package/pg$1
    rm -rf "$out"
    (
        PG_CONFIG=$(pg_config_of "$1")
        . scripts/pg-major.sh
        [ "$PG_MAJOR" = "$1" ] || { echo "error: $PG_CONFIG is PostgreSQL $PG_MAJOR, not $1" >&2; exit 1; }
        cargo pgrx package "${PG_FEATURES[@]}" --pg-config "$PG_CONFIG" --out-dir "$out" >&2
    )
    echo "$out"
}

# Debian package dependencies of the library: the packages of its NEEDED libraries,
# libc6 at the newest GLIBC symbol version it uses.
lib_depends() {
    local so=$1 lib pkg glibc deps=()
    glibc=$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
    for lib in $(objdump -p "$so" | awk '$1 == "NEEDED" { print $2 }'); do
        pkg=$(dpkg -S "*/$lib" 2>/dev/null | head -n 1 | cut -d: -f1) || true
        case "$pkg" in
            "" | postgresql-*) ;;  # the server itself (covered by postgresql-<major>)
            libc6) deps+=("libc6 (>= $glibc)") ;;
            *) deps+=("$pkg") ;;
        esac
    done
    printf '%s\n' "${deps[@]}" | sort -u | paste -sd, | sed 's/,/, /g'
}

deb() {
    local major=$1 staged name root deb so
    staged=$(stage "$major")
    name=postgresql-$major-synapse-compress
    root=$ROOT/target/package/$name
    rm -rf "$root"
    mkdir -p "$root/DEBIAN"
    cp -a "$staged/." "$root/"
    find "$root" -type d -exec chmod 0755 {} +
    find "$root" -type f -exec chmod 0644 {} +
    so=$(find "$root" -name 'synapse_compress.so')
    local deps; deps=$(lib_depends "$so")
    cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $VERSION-1
Architecture: $(dpkg --print-architecture)
Maintainer: synapse_compress developers <dev@synapse-compress.invalid>
Depends: postgresql-$major${deps:+, $deps}
Section: database
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: Compress Synapse's state tables inside PostgreSQL $major
 synapse_compress is a PostgreSQL extension that compresses the state tables of a
 Synapse (Matrix homeserver) database in place: compress_room(), the
 compress_database() procedure and an optional background worker.
 .
 After installing: CREATE EXTENSION synapse_compress; in Synapse's database.
EOF
    deb=$DIST/${name}_${VERSION}-1_$(dpkg --print-architecture).deb
    dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
    echo "wrote $deb ($(du -h "$deb" | cut -f1))"
}

tarball() {
    local major=$1 staged pgc top dir tgz
    staged=$(stage "$major")
    pgc=$(pg_config_of "$major")
    top=synapse-compress-$VERSION-pg$major
    dir=$ROOT/target/package/$top
    rm -rf "$dir"
    mkdir -p "$dir/lib" "$dir/extension"
    cp "$staged$("$pgc" --pkglibdir)"/synapse_compress* "$dir/lib/"
    cp "$staged$("$pgc" --sharedir)"/extension/synapse_compress* "$dir/extension/"
    cat >"$dir/install.sh" <<'EOF'
#!/bin/sh
# Copies lib/ into `pg_config --pkglibdir` and extension/ into `pg_config --sharedir`/extension.
#   sh install.sh [/path/to/pg_config]      (default: pg_config on PATH)
set -eu
PG_CONFIG=${1:-pg_config}
here=$(cd "$(dirname "$0")" && pwd)
cp "$here"/lib/* "$("$PG_CONFIG" --pkglibdir)/"
cp "$here"/extension/* "$("$PG_CONFIG" --sharedir)/extension/"
echo "installed synapse_compress into $("$PG_CONFIG" --pkglibdir)"
EOF
    chmod 0755 "$dir/install.sh"
    tgz=$DIST/$top.tar.gz
    tar -C "$ROOT/target/package" --owner=0 --group=0 -czf "$tgz" "$top"
    echo "wrote $tgz ($(du -h "$tgz" | cut -f1))"
}

for major in "${majors[@]}"; do
    if [ "$major" = 15 ]; then deb "$major"; else tarball "$major"; fi
done
