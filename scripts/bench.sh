#!/usr/bin/env bash
# `make bench`: synapse_compress against the existing tool (synapse_auto_compressor)
# and the raw read+write limit, on generated workloads; writes BENCHMARKS.md.
#   scripts/bench.sh [--scale F] [--only headline,bigstate,manyrooms,forks,spamjoin,scaling,levels]
#                    [--no-tool] [--sql-check] [--out FILE]      (--help for all)
# Needs the extension installed (make bench runs `make install build` first).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DIR=${BENCH_DIR:-/tmp/synapse_compress/bench}
PORT=${BENCH_PORT:-55440}
VENV=$ROOT/.cache/bench-venv

# The existing tool: 0.1.2 is the last working build on PyPI (0.1.4 is empty).
if ! "$VENV/bin/python" -c 'import synapse_auto_compressor, psycopg2' 2>/dev/null; then
    echo "installing: $VENV (synapse_auto_compressor 0.1.2, psycopg2-binary)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        'synapse_auto_compressor==0.1.2' 'psycopg2-binary==2.9.*' </dev/null
    "$VENV/bin/python" -c 'import synapse_auto_compressor, psycopg2'
fi
[ -x target/release/synapse-compress-gen ] || cargo build --release -p synapse_compress_testkit --bins

mkdir -p /tmp/synapse_compress && chmod a+rx /tmp/synapse_compress
# Autovacuum off and explicit VACUUM ANALYZE + CHECKPOINT before each timed run, so
# runs do not disturb each other; the templates stay in DIR for the next run.
bash scripts/cluster.sh start "$DIR" "$PORT" "shared_buffers = '1GB'" "max_wal_size = '8GB'" \
    "checkpoint_timeout = '30min'" "autovacuum = off" >/dev/null
trap 'bash scripts/cluster.sh stop "$DIR" >/dev/null' EXIT
BENCH_HOST=$DIR BENCH_PORT=$PORT "$VENV/bin/python" bench/bench.py "$@"
