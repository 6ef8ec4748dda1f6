"""Run the existing tool (synapse_auto_compressor) until it has no work left.

    tool_run.py DB_URL CHUNKS_PER_CALL  ->  one JSON line on stdout

Run as a child process of bench.py, which samples this process's memory. The tool
returns nothing, so "no work left" is detected from its own bookkeeping: a call that
moves neither state_compressor_total_progress nor state_compressor_progress
processed no chunk (every processed chunk, committed or skipped, advances both).
"""

import json
import logging
import sys
import time

import psycopg2
import synapse_auto_compressor

LEVELS = "100,50,25"
CHUNK_SIZE = 500


def progress(cur):
    """The tool's bookkeeping, as one comparable value."""
    cur.execute("SELECT to_regclass('state_compressor_progress') IS NOT NULL")
    if not cur.fetchone()[0]:
        return None
    cur.execute("SELECT coalesce(max(lowest_uncompressed_group), -1) FROM state_compressor_total_progress")
    total = cur.fetchone()[0]
    cur.execute("SELECT count(*), coalesce(sum(last_compressed), 0) FROM state_compressor_progress")
    return (total, *cur.fetchone())


class Counter(logging.Handler):
    """Counts the tool's warnings (chunks it skipped because they would grow)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


def peak_rss_kb():
    """VmHWM: this process's peak resident set (anonymous + file-backed), from the kernel."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    url, per_call = sys.argv[1], int(sys.argv[2])
    warnings = Counter()
    logging.getLogger().addHandler(warnings)
    logging.getLogger().setLevel(logging.WARNING)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    calls, before = 0, progress(cur)
    start = time.monotonic()
    while True:
        synapse_auto_compressor.compress_state_events_table(
            db_url=url, chunk_size=CHUNK_SIZE, default_levels=LEVELS, number_of_chunks=per_call
        )
        calls += 1
        after = progress(cur)
        if after == before:
            break
        before = after
    seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "calls": calls, "warnings": warnings.count,
                      "vmhwm_kb": peak_rss_kb()}))


if __name__ == "__main__":
    main()
