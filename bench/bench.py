"""`make bench`: synapse_compress side by side with the existing tool and the raw limit.

Run through scripts/bench.sh (it sets up the virtualenv and the cluster):
    bash scripts/bench.sh [--scale F] [--only W1,W2,scaling,levels] [--no-tool] [--sql-check]
                          [--out FILE]

For each workload a generated Synapse database is loaded once into a template; each
contender gets its own copy (CREATE DATABASE ... TEMPLATE), VACUUM ANALYZE and a
CHECKPOINT before its timed run:
  tool  synapse_auto_compressor 0.1.2 (chunk_size 500, levels 100,50,25) in a child
        process (bench/tool_run.py) until it has no work left;
  room  compress_room on every room, largest first, in one session (a transaction
        per room, as an admin's loop would);
  db    CALL compress_database(): the scheduled path, the same the background worker
        takes (chunk_pause 0);
  raw   the same rows read in group order (COPY ... TO '/dev/null'), one INSERT ...
        SELECT of compress_room's rows_after rows into an indexed scratch table, and one
        DELETE of the rows removed (the lowest groups'), as issue 11 defines the limit.
levels: compress_room on the headline preset under each of SWEEP's levels, for the
rows after against the read latency and the longest chain (levels "100" rewrites
nothing: the measurement's own noise).
Every group's resolved state is fingerprinted before and after each contender. Ours
run at client_min_messages = debug1, and their DEBUG1 lines give the time by phase
(load, resolve, plan, verify, write, read back; the rest is bookkeeping).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "target/release/synapse-compress-gen")
# The server PG_CONFIG belongs to (default: Debian's 15), as in scripts/cluster.sh.
PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")


def pg_config(flag):
    return subprocess.run([PG_CONFIG, flag], check=True, capture_output=True, text=True).stdout.strip()


PSQL = os.path.join(pg_config("--bindir"), "psql")
LIBRARY = os.path.join(pg_config("--pkglibdir"), "synapse_compress.so")  # the installed extension
LEVELS = "100,50,25"
# Workload name -> (generator preset, seed).
WORKLOADS = {"headline": ("headline", 1), "bigstate": ("bigstate", 1),
             "manyrooms": ("manyrooms", 1), "forks": ("forks", 1),
             "spamjoin": ("spamjoin", 1)}
# Our two paths: compress_room per room, and the scheduled run.
PATHS = {"room": "compress_room", "db": "compress_database"}
PHASES = ("load", "resolve", "plan", "verify", "write", "read back")
SCALING = (1 / 16, 1 / 4, 1)  # multiples of the base scale, for the headline preset
# compress_room's levels against read latency on the headline preset ("levels"): the
# default first, then shallower trees (fewer hops per read, more rows).
SWEEP = (LEVELS, "50,25", "30,15", "100")

# Synapse's full-state read, verbatim from _get_state_groups_from_groups_txn
# (synapse/storage/databases/state/bg_updates.py, StateFilter.all(): empty where
# clause), run as Synapse does, after SET LOCAL enable_seqscan=off.
SYNAPSE_READ = """
                WITH RECURSIVE sgs(state_group) AS (
                    VALUES(%s::bigint)
                    UNION ALL
                    SELECT prev_state_group FROM state_group_edges e, sgs s
                    WHERE s.state_group = e.state_group
                )
                
                    SELECT DISTINCT ON (type, state_key)
                        type, state_key, event_id
                    FROM state_groups_state
                    WHERE state_group IN (
                        SELECT state_group FROM sgs
                    ) 
                    ORDER BY type, state_key, state_group DESC
                
            """


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, host, port):
        self.host, self.port = host, port

    def connect(self, db):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db)
        conn.autocommit = True
        return conn

    def query(self, db, sql, args=None):
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def url(self, db):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db):
        return [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
                "-U", "postgres", "-d", db]


# ---------------------------------------------------------------- databases

def template(cl, preset, seed, scale):
    """A database holding the generated workload, built once per (preset, scale, generator)."""
    name = f"tpl_{preset}_{scale:g}".replace(".", "_").replace("-", "_")
    gen_args = ["--preset", preset, "--scale", f"{scale:g}", "--seed", str(seed)]
    # The comment records what it was built from; a rebuilt generator rebuilds it.
    key = " ".join(gen_args) + f" gen-mtime {int(os.stat(GEN).st_mtime)}"
    have = cl.query("postgres", "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = %s", (name,))
    if have and have[0][0] == key:
        return name
    log(f"  loading {name}: synapse-compress-gen {' '.join(gen_args)}")
    subprocess.run(["bash", "scripts/cluster.sh", "createdb", cl.host, str(cl.port), name],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    gen = subprocess.Popen([GEN, *gen_args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    subprocess.run(cl.psql(name), stdin=gen.stdout, check=True, stdout=subprocess.DEVNULL)
    gen.stdout.close()
    if gen.wait() != 0:
        raise RuntimeError(f"synapse-compress-gen {gen_args} failed")
    cl.query(name, "VACUUM ANALYZE")
    cl.query("postgres", f'COMMENT ON DATABASE "{name}" IS %s', (key,))
    return name


def copy(cl, tpl, name):
    """A fresh, vacuumed copy of a template; checkpointed so timed runs start clean."""
    cl.query("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    cl.query("postgres", f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    cl.query(name, "VACUUM ANALYZE")
    cl.query(name, "CHECKPOINT")
    return name


def drop(cl, name):
    cl.query("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def counts(cl, db):
    (rows, groups, rooms), = cl.query(db, "SELECT (SELECT count(*) FROM state_groups_state), "
                                      "(SELECT count(*) FROM state_groups), "
                                      "(SELECT count(DISTINCT room_id) FROM state_groups)")
    return {"rows": rows, "groups": groups, "rooms": rooms}


# ---------------------------------------------------------------- state check

def fingerprints(cl, db):
    """Every group's resolved state as (number of keys, additive 64-bit hash of its rows).

    Same semantics as pgrx-tests/e2e/lib.sql's sc_test.fingerprints() (walk the predecessor
    chain, the highest group wins per (type, state_key), ties on the smallest event_id),
    but computed in one pass over the rows: a depth-first walk of the forest of groups
    applies each group's delta on entry and undoes it on exit, so the cost is
    O(rows), not O(groups x state size) (minutes instead of hours on bigstate/headline).
    The forest must be sound (one predecessor, with a lower id): anything else raises.
    """
    conn = cl.connect(db)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id FROM state_groups")
        groups = {g for g, in cur}
        cur.execute("SELECT state_group, prev_state_group FROM state_group_edges")
        prev = {}
        for g, p in cur:
            if prev.get(g, p) != p or p >= g:
                raise RuntimeError(f"group {g}: unsound edge to {p}")
            prev[g] = p
        conn.autocommit = False  # a named (server-side) cursor needs a transaction
        cur.execute("SET LOCAL work_mem = '256MB'")
        rows = conn.cursor("fp")
        rows.itersize = 100_000
        rows.execute("SELECT state_group, hashtextextended(type || E'\\x1f' || state_key, 0), "
                     "hashtextextended(type || E'\\x1f' || state_key || E'\\x1f' || event_id, 0) "
                     "FROM state_groups_state ORDER BY state_group, type, state_key, event_id")
        delta = defaultdict(dict)
        for g, key, row in rows:
            delta[g].setdefault(key, row)  # first = smallest event_id, as sc_test
        conn.rollback()
    finally:
        conn.close()
    children = defaultdict(list)
    for g, p in prev.items():
        children[p].append(g)
    nodes = groups | prev.keys() | set(prev.values()) | delta.keys()
    out, state, total = {}, {}, 0
    stack = [(n, None) for n in nodes if n not in prev]
    while stack:
        node, undo = stack.pop()
        if undo is not None:  # leaving node: back to its predecessor's state
            for key, old in reversed(undo):
                total -= state[key]
                if old is None:
                    del state[key]
                else:
                    state[key] = old
                    total += old
            continue
        undo = []
        for key, row in delta.get(node, {}).items():
            old = state.get(key)
            undo.append((key, old))
            total += row - (old or 0)
            state[key] = row
        if node in groups:
            out[node] = (len(state), total & 0xFFFF_FFFF_FFFF_FFFF)
        stack.append((node, undo))
        stack.extend((c, None) for c in children[node])
    return out


def compare(before, after):
    bad = sorted(g for g in before.keys() | after.keys() if before.get(g) != after.get(g))
    if bad:
        return f"FAILED: {len(bad)} groups differ (e.g. {bad[0]})"
    return "ok"


def sql_check(cl, db, when):
    """The exact but slow check of pgrx-tests/e2e/lib.sql (--sql-check)."""
    if when == "before":
        cl.query(db, "CREATE EXTENSION IF NOT EXISTS synapse_compress")
        subprocess.run(cl.psql(db) + ["-f", "pgrx-tests/e2e/lib.sql"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        cl.query(db, "CALL sc_test.snapshot()")
        return None
    try:
        cl.query(db, "CALL sc_test.assert_same_state()")
        return "ok"
    except psycopg2.Error as e:
        return f"FAILED: {e.pgerror.strip()}"


# ---------------------------------------------------------------- measurements

def read_latency(cl, db, sample, reps=3):
    """Median and p99 over the sample (ms) of Synapse's full-state read of one group.

    A warm-up pass, then each group's best of `reps` passes: the machine is shared, and
    the minimum filters out other jobs' interference, not the query's own cost.
    """
    conn = cl.connect(db)
    conn.autocommit = False
    best = {g: float("inf") for g in sample}
    try:
        cur = conn.cursor()
        cur.execute("SET LOCAL enable_seqscan=off")
        for rep in range(reps + 1):
            for g in sample:
                t = time.perf_counter()
                cur.execute(SYNAPSE_READ, (g,))
                cur.fetchall()
                if rep:
                    best[g] = min(best[g], (time.perf_counter() - t) * 1000)
        conn.rollback()
    finally:
        conn.close()
    return percentiles(best.values())


# What Synapse's read of each sampled group visits: the rows its chain holds (the
# read fetches and sorts them all) and its hops (the read looks up each group's edge:
# hops + 1 index lookups).
READ_COST = """
    WITH RECURSIVE sgs(state_group) AS (
        VALUES (%s::bigint)
      UNION ALL
        SELECT prev_state_group FROM state_group_edges e, sgs s
        WHERE s.state_group = e.state_group)
    SELECT (SELECT count(*) FROM state_groups_state
            WHERE state_group IN (SELECT state_group FROM sgs)),
           (SELECT count(*) - 1 FROM sgs)
"""


def percentiles(values):
    """Median and p99 as read_latency takes them."""
    v = sorted(values)
    return statistics.median(v), v[min(len(v) - 1, int(len(v) * 0.99))]


def read_cost(cl, db, sample):
    """Rows and hops Synapse's read visits (median / p99 over the sample): what its time
    follows, so a read slower than another is explained by one or the other."""
    conn = cl.connect(db)
    try:
        cur = conn.cursor()
        costs = []
        for g in sample:
            cur.execute(READ_COST, (g,))
            costs.append(cur.fetchone())
    finally:
        conn.close()
    return {"rows": percentiles(c[0] for c in costs), "hops": percentiles(c[1] for c in costs)}


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:"))


class PeakRss:
    """scripts/peak-rss.sh on a pid: its peak RssAnon (private memory) in kB."""

    def __init__(self, pid):
        fd, self.out = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        self.stop = self.out + ".stop"
        self.proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts/peak-rss.sh"),
                                      str(pid), self.out, self.stop])

    def finish(self):
        open(self.stop, "w").close()
        self.proc.wait()
        with open(self.out) as f:
            kb = int(f.read().strip() or 0)
        os.unlink(self.out)
        os.unlink(self.stop)
        return kb


class PhaseLog(list):
    """conn.notices: adds up the DEBUG1 time-by-phase lines of ours as they arrive
    (psycopg2 keeps only the last 50 notices otherwise)."""

    LINE = re.compile(r"time by phase: (.*)$")
    ITEM = re.compile(r"([a-z][a-z ]*?) ([0-9.]+) ms")
    START = re.compile(r"run \d+ started in ([0-9.]+) ms")
    ACCOUNTED = re.compile(r"memory accounted at peak: (\d+) kB")

    def __init__(self):
        super().__init__()
        self.ms = defaultdict(float)
        self.accounted_kb = None

    def append(self, notice):
        if m := self.LINE.search(notice.strip()):
            for name, ms in self.ITEM.findall(m.group(1)):
                self.ms[name.strip()] += float(ms)
        elif m := self.START.search(notice):
            self.ms["other"] += float(m.group(1))
        elif m := self.ACCOUNTED.search(notice):
            self.accounted_kb = max(self.accounted_kb or 0, int(m.group(1)))
        elif not notice.startswith("DEBUG"):
            super().append(notice)


def run_ours(cl, db, path, levels=LEVELS):
    """One of our paths, in one backend whose peak private memory is sampled."""
    cl.query(db, "CREATE EXTENSION IF NOT EXISTS synapse_compress")
    conn = cl.connect(db)
    try:
        conn.notices = PhaseLog()
        cur = conn.cursor()
        # compress_database's pause between chunks yields to Synapse; alone on the
        # cluster it would only add sleep to the measured time.
        cur.execute("SET synapse_compress.chunk_pause = 0")
        cur.execute("SET client_min_messages = debug1")
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        start_kb = rss_anon_kb(pid)
        rss = PeakRss(pid)
        t = time.perf_counter()
        if path == "db":
            how = "CALL compress_database()"
            cur.execute("CALL compress_database()")
        else:
            cur.execute("SELECT room_id FROM state_groups GROUP BY 1 ORDER BY count(*) DESC")
            rooms = [r for r, in cur.fetchall()]
            how = "compress_room" + (" per room" if len(rooms) > 1 else "")
            for room in rooms:  # autocommit: one transaction per room
                cur.execute("SELECT * FROM compress_room(%s, levels => %s)", (room, levels))
        seconds = time.perf_counter() - t
        peak_kb = rss.finish()
        cur.execute("RESET client_min_messages")
        cur.execute("SELECT current_setting('synapse_compress.chunk_size', true)")
        how += f" (chunk_size {cur.fetchone()[0]})"
        summary = [n.strip() for n in conn.notices if "compress_database:" in n][-1:]
        phases = {k: v / 1000 for k, v in conn.notices.ms.items()}
        accounted_kb = conn.notices.accounted_kb
    finally:
        conn.close()
    # What no DEBUG1 line covers: commits, the procedure's loop, the client's calls.
    phases["driver"] = max(0.0, seconds - sum(phases.values()))
    return {"seconds": seconds, "peak_kb": peak_kb, "start_kb": start_kb,
            "accounted_kb": accounted_kb, "how": how,
            "notes": summary,
            "library": library_stamp(), "phases": phases}


def library_stamp():
    """When the installed extension was built: a reinstall mid-run shows in the report."""
    mtime = datetime.datetime.fromtimestamp(os.stat(LIBRARY).st_mtime, datetime.timezone.utc)
    return mtime.strftime("%Y-%m-%d %H:%M:%S UTC")


def run_tool(cl, db, timeout):
    """The existing tool in a child process; its RssAnon sampled like our backend's."""
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench/tool_run.py"),
                              cl.url(db), "500"], stdout=subprocess.PIPE, text=True)
    rss = PeakRss(child.pid)
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        rss.finish()
        return {"error": f"timeout after {timeout}s"}
    peak_kb = rss.finish()
    if child.returncode != 0:
        return {"error": f"exit {child.returncode}"}
    res = json.loads(out)
    res["peak_kb"] = peak_kb
    return res


def run_raw(cl, db, rows_before, rows_after):
    """The hardware's share, as issue 11 defines it: read every row in group order, write
    rows_after rows once, delete the rows removed (rows_before - rows_after) in one
    statement over the lowest groups, the order the table and its index are in."""
    conn = cl.connect(db)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE bench_scratch (LIKE state_groups_state INCLUDING ALL)")
        removed = max(rows_before - rows_after, 0)
        cut = None
        if removed:
            # The group at which the rows counted in id order reach `removed`.
            cur.execute("SELECT state_group FROM (SELECT state_group, "
                        "sum(count(*)) OVER (ORDER BY state_group) AS upto "
                        "FROM state_groups_state GROUP BY state_group) s "
                        "WHERE upto >= %s ORDER BY state_group LIMIT 1", (removed,))
            cut = cur.fetchone()[0]
        cur.execute("CHECKPOINT")
        t = time.perf_counter()
        cur.execute("COPY (SELECT state_group, type, state_key, event_id FROM state_groups_state "
                    "ORDER BY state_group) TO '/dev/null'")
        read = time.perf_counter() - t
        t = time.perf_counter()
        cur.execute("INSERT INTO bench_scratch SELECT * FROM state_groups_state LIMIT %s",
                    (rows_after,))
        write = time.perf_counter() - t
        t = time.perf_counter()
        if cut is not None:
            cur.execute("DELETE FROM state_groups_state WHERE state_group <= %s", (cut,))
        delete = time.perf_counter() - t
    finally:
        conn.close()
    return {"seconds": read + write + delete, "read": read, "write": write, "delete": delete}


def contender(cl, tpl, name, before, sample, args, run, after=None):
    """Copy, run, then rows after, state check and read latency on the result (and
    `after(db)`'s figures)."""
    db = copy(cl, tpl, name)
    if args.sql_check:
        sql_check(cl, db, "before")
        cl.query(db, "CHECKPOINT")
    try:
        res = run(db)
    except psycopg2.Error as e:
        res = {"error": (e.pgerror or str(e)).strip().splitlines()[0]}
    if "error" not in res:
        cl.query(db, "VACUUM ANALYZE")
        res["rows_after"] = counts(cl, db)["rows"]
        try:
            res["check"] = compare(before, fingerprints(cl, db))
        except RuntimeError as e:
            res["check"] = f"FAILED: {e}"
        if args.sql_check:
            res["sql_check"] = sql_check(cl, db, "after")
        res["read"] = read_latency(cl, db, sample)
        res["read_cost"] = read_cost(cl, db, sample)
        if after:
            res.update(after(db))
    if not args.keep:
        drop(cl, db)
    return res


def workload(cl, args, name, preset, seed, scale, paths=tuple(PATHS)):
    """Load (once) and measure our paths and the raw limit; the tool runs later (tool_phase)."""
    tpl = template(cl, preset, seed, scale)
    r = {"name": name, "scale": scale, **counts(cl, tpl)}
    log(f"[{name}] scale {scale:g}: {r['rooms']} rooms, {r['groups']} groups, {r['rows']} rows")
    sample = [g for g, in cl.query(tpl, "SELECT id FROM state_groups ORDER BY md5(id::text) "
                                   "LIMIT %s", (args.sample,))]
    before = fingerprints(cl, tpl)
    r["read_before"] = read_latency(cl, tpl, sample)
    r["read_cost_before"] = read_cost(cl, tpl, sample)
    for path in paths:
        r[path] = contender(cl, tpl, f"b_{name}_{path}", before, sample, args,
                            lambda db, path=path: run_ours(cl, db, path))
        log(f"[{name}] {PATHS[path]}: {fmt_res(r[path])}")
    if paths:
        rows_after = r[paths[0]].get("rows_after", r["rows"])
        db = copy(cl, tpl, f"b_{name}_raw")
        r["raw"] = run_raw(cl, db, r["rows"], rows_after)
        drop(cl, db)
        log(f"[{name}] raw: {r['raw']['seconds']:.2f}s (read {r['raw']['read']:.2f}s, "
            f"write {r['raw']['write']:.2f}s, delete {r['raw']['delete']:.2f}s)")
    r["_ctx"] = (tpl, before, sample)
    return r


def max_hops(cl, db):
    """The longest chain: hops from any group down to its snapshot (Synapse reads walk them)."""
    return cl.query(db, """WITH RECURSIVE d(id, hops) AS (
            SELECT g.id, 0 FROM state_groups g
            WHERE NOT EXISTS (SELECT FROM state_group_edges e WHERE e.state_group = g.id)
          UNION ALL
            SELECT e.state_group, d.hops + 1 FROM state_group_edges e
            JOIN d ON e.prev_state_group = d.id)
        SELECT coalesce(max(hops), 0) FROM d""")[0][0]


def levels_sweep(cl, args, results):
    """compress_room on the headline preset under each of SWEEP's levels: rows against reads."""
    r = next((r for r in results if r["name"] == "headline"), None)
    if r is None:
        r = workload(cl, args, "headline", *WORKLOADS["headline"], args.scale, paths=())
    tpl, before, sample = r["_ctx"]
    sweep = {"rows_before": r["rows"], "read_before": r["read_before"],
             "read_cost_before": r["read_cost_before"],
             "hops_before": max_hops(cl, tpl), "settings": []}
    for levels in SWEEP:
        res = contender(cl, tpl, "b_levels", before, sample, args,
                        lambda db, levels=levels: run_ours(cl, db, "room", levels),
                        after=lambda db: {"hops": max_hops(cl, db)})
        res["levels"] = levels
        sweep["settings"].append(res)
        log(f"[levels {levels}] {fmt_res(res)}, max hops {res.get('hops')}")
    return sweep


def fixed_cost(cl, calls=50):
    """compress_room's cost per call with next to nothing to do: a room of two groups,
    its tables analyzed, called `calls` times in one session, a transaction each; median
    and p90 ms."""
    subprocess.run(["bash", "scripts/cluster.sh", "createdb", cl.host, str(cl.port), "b_fixed"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    try:
        conn = cl.connect("b_fixed")
        try:
            cur = conn.cursor()
            cur.execute("CREATE EXTENSION synapse_compress")
            cur.execute("""INSERT INTO state_groups (id, room_id, event_id)
                           VALUES (1, '!fixed:example.org', '$e1'), (2, '!fixed:example.org', '$e2');
                           INSERT INTO state_group_edges VALUES (2, 1);
                           INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id)
                           VALUES (1, '!fixed:example.org', 'm.room.create', '', '$e1'),
                                  (2, '!fixed:example.org', 'm.room.member', '@a:example.org', '$e2')""")
            # As autovacuum would after these inserts (and as every workload's copy is):
            # on never-analyzed tables PostgreSQL plans with default sizes (the
            # tangled-groups query then zeroes a hash table of up to work_mem per call):
            # 3.7 ms a call measured that way, 1.4 ms analyzed.
            cur.execute("ANALYZE state_groups, state_group_edges, state_groups_state")
            times, commits = [], []
            for _ in range(calls + 1):
                cur.execute("BEGIN")
                t = time.perf_counter()
                cur.execute("SELECT written FROM compress_room('!fixed:example.org')")
                cur.fetchall()
                times.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                cur.execute("COMMIT")
                commits.append((time.perf_counter() - t) * 1000)
            # The first call loads the library and the catalogs.
            times, commits = sorted(times[1:]), sorted(commits[1:])
        finally:
            conn.close()
    finally:
        drop(cl, "b_fixed")
    return {"median": statistics.median(times), "p90": times[int(len(times) * 0.9)], "calls": calls,
            "commit": statistics.median(commits)}


def tool_phase(cl, args, r):
    tpl, before, sample = r.pop("_ctx")
    r["tool"] = contender(cl, tpl, f"b_{r['name']}_tool", before, sample, args,
                          lambda db: run_tool(cl, db, args.tool_timeout))
    log(f"[{r['name']}] tool: {fmt_res(r['tool'])}")


def fmt_res(res):
    if "error" in res:
        return f"ERROR {res['error']}"
    return (f"{res['seconds']:.2f}s, rows after {res['rows_after']}, peak {res['peak_kb'] // 1024} MB, "
            f"state {res['check']}")


# ---------------------------------------------------------------- report

def ratio(a, b, digits=1):
    return f"{a / b:.{digits}f}x" if a is not None and b else "-"


def get(res, key):
    return None if res is None or "error" in res else res.get(key)


def mb(kb):
    return "-" if kb is None else f"{kb / 1024:.0f}"


def secs(s):
    return "-" if s is None else f"{s:.2f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results, scaling, sweep, fixed, meta):
    out = [f"# Benchmarks\n\nGenerated by `make bench` (scripts/bench.sh, bench/bench.py); "
           f"do not edit by hand.\n",
           f"- command: `{meta['command']}` (= `{meta['script']}`), took {meta['minutes']:.0f} min",
           f"- date: {meta['date']}, commit {meta['commit']}",
           f"- machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem_gb']:.0f} GB RAM, "
           f"Linux {meta['kernel']}; shared with other jobs, so compare ratios, not seconds",
           f"- {meta['pg']}; bench cluster: {meta['pg_conf']}",
           f"- extension library installed {libraries(results + scaling)}",
           f"- existing tool: synapse_auto_compressor 0.1.2, chunk_size 500, levels {LEVELS}, "
           f"repeated until its progress tables stop moving; ours: levels {LEVELS}, "
           f"default settings but synapse_compress.chunk_pause = 0", ""]
    if results:
        out += ["## Time\n",
                "Wall time of the compression alone (seconds). room = compress_room on every room "
                "(a transaction each); db = `CALL compress_database()`, the path the background "
                "worker takes. raw = read every row in group order (`COPY ... ORDER BY "
                "state_group TO '/dev/null'`) + one `INSERT ... SELECT` of compress_room's rows "
                "after into an indexed copy of state_groups_state + one `DELETE` of the rows "
                "removed (rows before - rows after, the lowest groups': the order of the table "
                "and its index).\n",
                table(["workload", "rooms", "groups", "rows before", "tool s", "room s", "db s",
                       "raw s", "tool/room", "tool/db", "db/room", "room/raw", "db/raw"],
                      [[r["name"], r["rooms"], r["groups"], r["rows"],
                        secs(sec(r, "tool")), secs(sec(r, "room")), secs(sec(r, "db")),
                        secs(r["raw"]["seconds"]),
                        ratio(sec(r, "tool"), sec(r, "room")), ratio(sec(r, "tool"), sec(r, "db")),
                        ratio(sec(r, "db"), sec(r, "room"), 2),
                        ratio(sec(r, "room"), r["raw"]["seconds"]),
                        ratio(sec(r, "db"), r["raw"]["seconds"])] for r in results]),
                "\n## Time by phase\n",
                "Seconds, from our DEBUG1 time-by-phase lines: load (reading the state tables), "
                "resolve (each group's stored state), plan, verify (every rewrite, before and "
                "after writing), write, read back; bookkeeping = the rest of each call or chunk "
                "(progress, queue, locks, run start); driver = what no line covers (commits, "
                "the procedure's loop, the client's calls).\n",
                table(["workload", "path", "wall s", *PHASES, "bookkeeping", "driver"],
                      [[r["name"], PATHS[path], secs(sec(r, path)),
                        *[secs(phase(r, path, p)) for p in (*PHASES, "other", "driver")]]
                       for r in results for path in PATHS if r.get(path)]),
                "\n## Rows, memory, correctness\n",
                "Peak memory: private memory (RssAnon, sampled every 20 ms by scripts/peak-rss.sh) "
                "of the tool's process and of our backend; the tool's kernel-recorded VmHWM "
                "(resident peak including its mapped files) in brackets. State check: every "
                "group's resolved state (Synapse's semantics) fingerprinted before and after.\n",
                table(["workload", "tool rows", "room rows", "db rows", "room/tool", "db/tool",
                       "tool MB", "room MB", "db MB", "room/tool mem", "db/tool mem",
                       "state tool", "state room", "state db"],
                      [[r["name"], *[get(r.get(w), "rows_after") or "-" for w in ("tool", *PATHS)],
                        *[ratio(get(r.get(w), "rows_after"), get(r.get("tool"), "rows_after"), 2)
                          for w in PATHS],
                        f"{mb(get(r.get('tool'), 'peak_kb'))} ({mb(get(r.get('tool'), 'vmhwm_kb'))})",
                        *[mb(get(r.get(w), "peak_kb")) for w in PATHS],
                        *[ratio(get(r.get(w), "peak_kb"), get(r.get("tool"), "peak_kb"), 2)
                          for w in PATHS],
                        *[state_text(r.get(w)) for w in ("tool", *PATHS)]] for r in results]),
                "\nWhere compress_room's backend memory goes (MB): private memory when the call "
                "started (the backend, its caches, the extension loaded), the most the engine's "
                "own accounting (`synapse_compress.memory_limit`) held, and the peak; peak - "
                "start - accounted is what the accounting does not see (SPI's and the "
                "allocator's share).\n",
                table(["workload", "at start", "accounted", "peak", "unaccounted"],
                      [[r["name"], mb(get(r.get("room"), "start_kb")),
                        mb(get(r.get("room"), "accounted_kb")), mb(get(r.get("room"), "peak_kb")),
                        mb(unaccounted(r.get("room")))] for r in results]),
                "\n## Reading state\n",
                f"Synapse's full-state read (`_get_state_groups_from_groups_txn`, verbatim, after "
                f"`SET LOCAL enable_seqscan=off`) over the same {meta['sample']} groups, ms, "
                f"median / p99 of each group's best of 3 after a warm-up pass; after = "
                f"compressed, then VACUUM ANALYZE.\n",
                table(["workload", "before", "after tool", "after room", "after db"],
                      [[r["name"], lat(r["read_before"]),
                        *[lat(get(r.get(w), "read")) for w in ("tool", *PATHS)]]
                       for r in results]),
                "\nWhat each of those reads visits, median / p99 over the sample: the rows "
                "of its chain (it fetches and sorts them all) and its hops (it looks up each "
                "group's edge). The read's time follows mostly its rows.\n",
                table(["workload", "rows before", "rows after tool", "rows after room",
                       "rows after db", "hops before", "hops after tool", "hops after room",
                       "hops after db"],
                      [[r["name"], *[visits(c, "rows") for c in costs(r)],
                        *[visits(c, "hops") for c in costs(r)]] for r in results])]
    if scaling:
        base = scaling[0]
        out += ["\n## Scaling (headline preset)\n",
                "Same preset at 1x, 4x, 16x of a base scale; ms per million rows before.\n",
                table(["scale", "groups", "rows before", "room s", "room ms/Mrow", "db s",
                       "db ms/Mrow", "raw s", "raw ms/Mrow", "room/raw", "room MB", "db MB"],
                      [[f"{r['scale']:g} ({r['scale'] / base['scale']:.0f}x)", r["groups"], r["rows"],
                        secs(sec(r, "room")), per_mrow(sec(r, "room"), r["rows"]),
                        secs(sec(r, "db")), per_mrow(sec(r, "db"), r["rows"]),
                        secs(r["raw"]["seconds"]), per_mrow(r["raw"]["seconds"], r["rows"]),
                        ratio(sec(r, "room"), r["raw"]["seconds"]),
                        mb(get(r.get("room"), "peak_kb")), mb(get(r.get("db"), "peak_kb"))]
                       for r in scaling]),
                "\ncompress_room's time by phase (as above) at each scale, ms per million rows "
                "before, beside the room's state keys (distinct type and state_key): where the "
                "cost per row grows.\n",
                table(["scale", "keys", *PHASES, "bookkeeping"],
                      [[f"{r['scale'] / base['scale']:.0f}x", r.get("keys", "-"),
                        *[per_mrow(phase(r, "room", p), r["rows"]) for p in (*PHASES, "other")]]
                       for r in scaling])]
    if sweep:
        tool = next((r.get("tool") for r in results if r["name"] == "headline"), None)
        out += ["\n## Rows against reads (headline preset, compress_room)\n",
                "The levels decide how deep the tree of deltas is: a read walks every hop from "
                "a group down to its snapshot, and the rows of each. Synapse stores a snapshot "
                "every 100 groups (chains of at most 99 hops). Each setting's rows after, the "
                "longest chain (max hops), the same read as above (median / p99 ms) and the rows "
                "it visits (median / p99).\n",
                table(["levels", "max hops", "rows after", "rows/before", "read ms", "p99/before",
                       "read visits rows"],
                      [["stored by Synapse", sweep["hops_before"], sweep["rows_before"], "1.00x",
                        lat(sweep["read_before"]), "1.00x", visits(sweep["read_cost_before"], "rows")]]
                      + ([["the tool, " + LEVELS, "-", tool["rows_after"],
                           ratio(tool["rows_after"], sweep["rows_before"], 2), lat(tool["read"]),
                           ratio(tool["read"][1], sweep["read_before"][1], 2),
                           visits(tool.get("read_cost"), "rows")]]
                         if tool and "error" not in tool else [])
                      + [[s["levels"], s.get("hops", "-"), get(s, "rows_after") or "-",
                          ratio(get(s, "rows_after"), sweep["rows_before"], 2), lat(get(s, "read")),
                          ratio(get(s, "read") and s["read"][1], sweep["read_before"][1], 2),
                          visits(get(s, "read_cost"), "rows")]
                         for s in sweep["settings"]])]
    notes = [f"- {r['name']}: {PATHS[w]}: {n}" for r in results for w in PATHS
             for n in get(r.get(w), "notes") or []]
    notes += [f"- {r['name']}: tool: {t['calls']} calls, {t['warnings']} warnings (chunks it skipped "
              f"because they would grow)" for r in results if (t := r.get("tool")) and "calls" in t]
    notes += [f"- {r['name']}: {who}: ERROR {r[who]['error']}" for r in results + scaling
              for who in ("tool", *PATHS) if r.get(who) and "error" in r[who]]
    if notes:
        out += ["\n## Runs\n", *notes]
    out += ["\n## Fixed cost of a call\n",
            f"compress_room on a room of two groups (its tables analyzed), {fixed['calls']} "
            f"calls in one session (a "
            f"transaction each, after a first one), the call's statement as a client sees it: "
            f"median {fixed['median']:.2f} ms, p90 {fixed['p90']:.2f} ms. Each call's COMMIT "
            f"then took {fixed['commit']:.2f} ms (median): the WAL flush of the row locks "
            f"taken, the disk's share."]
    out += ["\n## Targets (issue 11)\n", targets(results, scaling, sweep, fixed)]
    return "\n".join(out) + "\n"


def sec(r, who):
    return get(r.get(who), "seconds")


def phase(r, path, name):
    res = r.get(path)
    return None if res is None or "error" in res else res["phases"].get(name, 0.0)


def libraries(results):
    stamps = {}
    for r in results:
        for w in PATHS:
            if get(r.get(w), "library"):
                stamps.setdefault(r[w]["library"], []).append(f"{r['name']} {w}")
    if len(stamps) == 1:
        return next(iter(stamps))
    return "; ".join(f"{t} (used by {', '.join(n)})" for t, n in stamps.items()) + \
        " -- REINSTALLED DURING THE RUN: the figures mix builds"


def state_text(res):
    if res is None:
        return "-"
    if "error" in res:
        return f"ERROR: {res['error']}"
    return res["check"] + (f" (sc_test: {res['sql_check']})" if "sql_check" in res else "")


def unaccounted(res):
    k = [get(res, x) for x in ("peak_kb", "start_kb", "accounted_kb")]
    return None if None in k else max(0, k[0] - k[1] - k[2])


def costs(r):
    """The read costs of a workload: before, then after the tool and each path."""
    return [r.get("read_cost_before"), *[get(r.get(w), "read_cost") for w in ("tool", *PATHS)]]


def visits(cost, key):
    return "-" if cost is None else f"{cost[key][0]:.0f} / {cost[key][1]:.0f}"


def lat(pair):
    return "-" if pair is None else f"{pair[0]:.2f} / {pair[1]:.2f}"


def per_mrow(seconds, rows):
    return "-" if seconds is None else f"{seconds * 1000 / (rows / 1e6):.0f}"


def targets(results, scaling, sweep, fixed):
    """Each target of issue 11 with the measured figure; '-' when not measured in this run."""
    by = {r["name"]: r for r in results}
    lines = []

    def line(what, ok, figure):
        mark = "-" if ok is None else ("met" if ok else "NOT met")
        lines.append(f"- {what}: {mark} ({figure})")

    def known(*xs):
        return all(x is not None for x in xs)

    for r in results:
        o, d = sec(r, "room"), sec(r, "db")
        line(f"compress_database within 1.3x of compress_room on {r['name']}",
             d <= 1.3 * o if known(o, d) else None, ratio(d, o, 2))
    line("compress_room's fixed cost per call well under 5 ms (median <= 2.5 ms)",
         fixed["median"] <= 2.5, f"{fixed['median']:.2f} ms")
    r = by.get("manyrooms")
    t, d = (sec(r, "tool"), sec(r, "db")) if r else (None, None)
    line("compress_database 10x faster than the tool on manyrooms",
         t >= 10 * d if known(t, d) else None, ratio(t, d))
    for name in ("headline", "bigstate", "spamjoin"):
        if r := by.get(name):
            for w in PATHS:
                o = sec(r, w)
                line(f"{PATHS[w]} within 3x of the raw limit on {name}",
                     o <= 3 * r["raw"]["seconds"] if known(o) else None,
                     ratio(o, r["raw"]["seconds"]))
    for r in results:
        for w in PATHS:
            t, o = get(r.get("tool"), "peak_kb"), get(r.get(w), "peak_kb")
            line(f"{PATHS[w]} peak memory <= the tool's on {r['name']}",
                 o <= t if known(t, o) else None, ratio(o, t, 2))
    for r in results:
        for w in PATHS:
            t, o = get(r.get("tool"), "rows_after"), get(r.get(w), "rows_after")
            limit = 0.5 if r["name"] in ("forks", "spamjoin") else 1
            line(f"{PATHS[w]} rows after <= {'half ' if limit < 1 else ''}the tool's on {r['name']}",
                 o <= limit * t if known(t, o) else None, ratio(o, t, 2))
    for r in results:
        for w in PATHS:
            t, o = get(r.get("tool"), "read"), get(r.get(w), "read")
            line(f"read p99 after {PATHS[w]} <= after the tool on {r['name']}",
                 o[1] <= t[1] if known(t, o) else None,
                 f"{lat(o)} vs {lat(t)} ms; a read visits rows "
                 f"{visits(get(r.get(w), 'read_cost'), 'rows')} vs "
                 f"{visits(get(r.get('tool'), 'read_cost'), 'rows')}, hops "
                 f"{visits(get(r.get(w), 'read_cost'), 'hops')} vs "
                 f"{visits(get(r.get('tool'), 'read_cost'), 'hops')}")
    if len(scaling) > 1:
        for w in PATHS:
            per = [None if sec(r, w) is None else sec(r, w) / r["rows"] for r in scaling]
            ok = None if None in per else max(per) <= 1.2 * min(per)
            line(f"{PATHS[w]} ms per million rows within 20% from 1x to 16x", ok,
                 ", ".join(per_mrow(sec(r, w), r["rows"]) for r in scaling))
    if sweep:
        p99 = sweep["read_before"][1]
        fit = [s for s in sweep["settings"] if get(s, "read") and s["read"][1] <= p99]
        best = min(fit, key=lambda s: s["rows_after"], default=None)
        line("a setting keeps read p99 no slower than before on headline",
             best is not None,
             f"levels {best['levels']}: {lat(best['read'])} ms, rows "
             f"{ratio(best['rows_after'], sweep['rows_before'], 2)} of before" if best
             else f"none of {', '.join(s['levels'] for s in sweep['settings'])}")
        for s in sweep["settings"]:
            if "check" in s:
                line(f"state identical after compress_room, levels {s['levels']}, on headline",
                     s["check"] == "ok", s["check"])
    for r in results:
        for who in ("tool", *PATHS):
            if r.get(who) and "check" in r[who]:
                line(f"state identical after {PATHS.get(who, who)} on {r['name']}",
                     r[who]["check"] == "ok", r[who]["check"])
    return "\n".join(lines)


def machine(cl, argv):
    def sh(*cmd):
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    commit = sh("git", "rev-parse", "--short", "HEAD")
    if sh("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    conf = cl.query("postgres", "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' "
                    "ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', "
                    "'max_wal_size', 'autovacuum', 'synchronous_commit', 'checkpoint_timeout')")[0][0]
    make = "make bench" + (f" BENCH_ARGS={shlex.quote(shlex.join(argv))}" if argv else "")
    return {"command": make, "script": shlex.join(["scripts/bench.sh", *argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit, "nproc": os.cpu_count(), "cpu": cpu, "mem_gb": mem / 2 ** 20,
            "kernel": platform.release(), "pg": cl.query("postgres", "SELECT version()")[0][0].split(" on ")[0],
            "pg_conf": conf}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every workload (default 1)")
    p.add_argument("--only", default=",".join([*WORKLOADS, "scaling", "levels"]),
                   help="comma-separated subset of: " + ", ".join([*WORKLOADS, "scaling", "levels"]))
    p.add_argument("--no-tool", action="store_true", help="skip the existing tool")
    p.add_argument("--sql-check", action="store_true",
                   help="also run pgrx-tests/e2e/lib.sql's exact sc_test check (slow)")
    p.add_argument("--sample", type=int, default=200, help="groups in the state read sample")
    p.add_argument("--tool-timeout", type=int, default=3600, help="seconds per tool run")
    p.add_argument("--keep", action="store_true", help="keep the compressed copies")
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = p.parse_args()
    only = [w for w in args.only.split(",") if w]
    unknown = set(only) - {*WORKLOADS, "scaling", "levels"}
    if unknown:
        p.error(f"unknown workloads: {', '.join(sorted(unknown))}")

    # scripts/bench.sh started the cluster and says where.
    cl = Cluster(os.environ["BENCH_HOST"], int(os.environ["BENCH_PORT"]))
    meta = machine(cl, sys.argv[1:])
    meta["sample"] = args.sample
    start = time.monotonic()
    # Ours everywhere first, the slow tool after: all of ours then runs within minutes,
    # on one build of the extension even while it is being reinstalled now and then.
    results = [workload(cl, args, w, *WORKLOADS[w], args.scale) for w in WORKLOADS if w in only]
    scaling = []
    if "scaling" in only:
        for f in SCALING:
            same = next((r for r in results if r["name"] == "headline" and f == 1), None)
            r = same or workload(cl, args, f"headline_{f * 16:g}x", "headline", 1,
                                 args.scale * f)
            # The state's size grows with the room in this preset (its members): what
            # resolving and verifying each group costs grows with it.
            (r["keys"],), = cl.query(r["_ctx"][0], "SELECT count(DISTINCT (type, state_key)) "
                                     "FROM state_groups_state")
            scaling.append(r)
    sweep = levels_sweep(cl, args, results) if "levels" in only else None
    fixed = fixed_cost(cl)
    log(f"compress_room fixed cost: {fixed['median']:.2f} ms median")
    if not args.no_tool:
        for r in results:
            tool_phase(cl, args, r)
    meta["minutes"] = (time.monotonic() - start) / 60
    text = report(results, scaling, sweep, fixed, meta)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    log(f"written to {args.out}")
    # An error or a changed state of ours is a bug to look at: make the run fail.
    failed = [f"{r['name']} {PATHS[w]}" for r in results + scaling for w in PATHS if r.get(w)
              and ("error" in r[w] or r[w]["check"] != "ok" or r[w].get("sql_check", "ok") != "ok")]
    failed += [f"headline compress_room levels {s['levels']}" for s in (sweep or {}).get("settings", [])
               if "error" in s or s["check"] != "ok"]
    if failed:
        log(f"FAILED (ours): {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
