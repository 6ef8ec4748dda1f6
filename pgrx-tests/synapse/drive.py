#!/usr/bin/env python3
"""Drives a real Synapse for the end-to-end test (pgrx-tests/synapse/run.sh).

Phases, each a subcommand; they share a JSON file ($E2E_STATE):
  populate  users, rooms and state changes through the client-server API
  record    (a) every group's resolved state (SQL) and, through Synapse's client API,
            the state and members at a sample of events
  stress    (b) compress_room over every room, again and again, while a writer keeps
            sending state and Synapse's purge-history deletes state groups
  verify    (c) after a restart of Synapse: the same resolved state for every
            surviving group, the same state and members through the client API
  repurge   (d) purge a compressed room's history; Synapse's deletion loop de-deltas
            the surviving children of the groups it deletes; the next
            compress_database run brings the rows back down, every group's state kept

Stdlib only. Talks to Synapse over HTTP (urllib) and to PostgreSQL through psql
(PGHOST/PGPORT/PGUSER from the environment, database $E2E_DB).
"""
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

BASE = os.environ.get("E2E_BASE_URL", "http://127.0.0.1:18448")
SECRET = os.environ.get("E2E_SECRET", "")
STATE_FILE = os.environ.get("E2E_STATE", "/tmp/synapse_compress/synapse-e2e-logs/state.json")
LOG_DIR = os.path.dirname(STATE_FILE)
DB = os.environ.get("E2E_DB", "synapse")
# Sizes (overridable for a quicker or a heavier run).
N_USERS = int(os.environ.get("E2E_USERS", "24"))
N_ROOMS = int(os.environ.get("E2E_ROOMS", "4"))
EVENTS_PER_ROOM = int(os.environ.get("E2E_EVENTS_PER_ROOM", "250"))
# The late purge room (see Purger) is bigger: after its purge point it needs several
# of Synapse's full snapshots for compression to pay off there.
LATE_EVENTS = int(os.environ.get("E2E_LATE_EVENTS", "450"))
SAMPLES_PER_ROOM = int(os.environ.get("E2E_SAMPLES_PER_ROOM", "12"))
# Rooms whose history is purged during compression (the first N_PURGE rooms).
N_PURGE = int(os.environ.get("E2E_PURGE_ROOMS", "2"))
STRESS_MAX_S = float(os.environ.get("E2E_STRESS_MAX_S", "180"))
# (d): how long Synapse's deletion loop (once a minute) may take to delete the marks.
REPURGE_MAX_S = float(os.environ.get("E2E_REPURGE_MAX_S", "300"))
# Synapse deletes groups marked pending deletion at least this long ago
# (StateDeletionDataStore.DELAY_BEFORE_DELETION_MS); we backdate the marks past it.
DELAY_BEFORE_DELETION_MS = 10 * 60 * 1000


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- HTTP


class HttpError(Exception):
    def __init__(self, code, body, what):
        super().__init__(f"{what}: HTTP {code}: {body[:300]}")
        self.code = code


def http(method, path, body=None, token=None, query=None, timeout=120):
    url = BASE + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    for attempt in range(20):
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            # Rate limits are configured off; honour one anyway rather than fail.
            if e.code == 429 and attempt < 19:
                time.sleep(json.loads(text).get("retry_after_ms", 500) / 1000)
                continue
            raise HttpError(e.code, text, f"{method} {path}") from None
    raise AssertionError("unreachable")


def q(s):
    return urllib.parse.quote(s, safe="")


def register(username, admin):
    """Shared-secret registration (admin API), as register_new_matrix_user does."""
    nonce = http("GET", "/_synapse/admin/v1/register")["nonce"]
    password = "pw-" + username
    mac = hmac.new(SECRET.encode(), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode() + b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    body = {"nonce": nonce, "username": username, "password": password,
            "admin": admin, "mac": mac.hexdigest()}
    r = http("POST", "/_synapse/admin/v1/register", body)
    return r["user_id"], r["access_token"]


def put_state(token, room, etype, key, content):
    txn = f"/_matrix/client/v3/rooms/{q(room)}/state/{q(etype)}/{q(key)}"
    return http("PUT", txn, content, token)["event_id"]


def room_post(token, room, action, body=None):
    return http("POST", f"/_matrix/client/v3/rooms/{q(room)}/{action}", body or {}, token)


# ---------------------------------------------------------------- psql


def psql(sql, variables=None, check=True):
    """Runs SQL (stdin, so :'var' interpolation works); returns rows as tuples."""
    cmd = ["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", DB]
    for k, v in (variables or {}).items():
        cmd += ["-v", f"{k}={v}"]
    p = subprocess.run(cmd, input=sql, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"psql failed ({p.returncode}): {p.stderr.strip()}\nSQL: {sql.strip()[:300]}")
    rows = [tuple(line.split("\t")) for line in p.stdout.splitlines() if line]
    return rows, p


# ---------------------------------------------------------------- shared state


def load():
    with open(STATE_FILE) as f:
        return json.load(f)


def save(st):
    tmp = STATE_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f, indent=1, sort_keys=True)
    os.replace(tmp, STATE_FILE)


# ---------------------------------------------------------------- room activity


class RoomDriver:
    """Sends a random mix of state changes into one room, tracking memberships so
    every request is valid (join only when not joined or banned, etc.)."""

    def __init__(self, room, admin_token, users, seed):
        self.room, self.admin = room, admin_token
        self.users = users  # [(user_id, token)]
        self.rng = random.Random(seed)
        self.membership = {u: "leave" for u, _ in users}
        self.events = []  # event ids of the state events we sent, in order
        self.n_sent = 0   # every state change (membership ones included)

    def _tok(self, uid):
        return dict(self.users)[uid]

    def _pick(self, membership):
        cands = [u for u, m in self.membership.items() if m == membership]
        return self.rng.choice(cands) if cands else None

    def join(self, uid):
        http("POST", f"/_matrix/client/v3/join/{q(self.room)}", {}, self._tok(uid))
        self.membership[uid] = "join"
        self.n_sent += 1

    def custom(self, nkeys):
        key = f"k{self.rng.randrange(nkeys)}"
        eid = put_state(self.admin, self.room, "m.custom", key,
                        {"v": self.rng.randrange(10**9), "pad": "x" * self.rng.randrange(40)})
        self.events.append(eid)
        self.n_sent += 1

    def step(self, nkeys=60):
        """One random state change."""
        r = self.rng.random()
        if r < 0.40:
            return self.custom(nkeys)
        if r < 0.50:
            eid = put_state(self.admin, self.room, "m.room.topic", "",
                            {"topic": f"topic {self.rng.randrange(10**6)}"})
        elif r < 0.55:
            eid = put_state(self.admin, self.room, "m.room.name", "",
                            {"name": f"room {self.rng.randrange(10**6)}"})
        else:
            return self._membership_step(r)
        self.events.append(eid)
        self.n_sent += 1

    def _membership_step(self, r):
        if r < 0.70:
            uid = self._pick("leave")
            if uid:
                return self.join(uid)
        elif r < 0.80:
            uid = self._pick("join")
            if uid:
                room_post(self._tok(uid), self.room, "leave")
                self.membership[uid] = "leave"
                self.n_sent += 1
                return
        elif r < 0.88:
            uid = self._pick("join")
            if uid:
                room_post(self.admin, self.room, "kick", {"user_id": uid, "reason": "e2e"})
                self.membership[uid] = "leave"
                self.n_sent += 1
                return
        elif r < 0.94:
            uid = self._pick("join") or self._pick("leave")
            if uid:
                room_post(self.admin, self.room, "ban", {"user_id": uid, "reason": "e2e"})
                self.membership[uid] = "ban"
                self.n_sent += 1
                return
        else:
            uid = self._pick("ban")
            if uid:
                room_post(self.admin, self.room, "unban", {"user_id": uid})
                self.membership[uid] = "leave"
                self.n_sent += 1
                return
        self.custom(nkeys=60)  # nothing valid to do for that draw


def run_threads(fns):
    """Runs callables in threads; re-raises the first failure."""
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(fn,)) for fn in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def populate():
    t0 = time.time()
    admin_id, admin_tok = register("admin", True)
    users = [register(f"u{i:02d}", False) for i in range(N_USERS)]
    log(f"registered {len(users) + 1} users in {time.time() - t0:.1f}s")
    rooms = []
    for i in range(N_ROOMS):
        r = http("POST", "/_matrix/client/v3/createRoom",
                 {"preset": "public_chat", "name": f"e2e room {i}", "topic": "start"}, admin_tok)
        rooms.append(r["room_id"])
    drivers = [RoomDriver(room, admin_tok, users, seed=i) for i, room in enumerate(rooms)]

    late = rooms[N_PURGE - 1] if N_PURGE > 1 else None

    def fill(d):
        # Everyone joins, 40 custom keys: each snapshot then holds ~70 rows.
        for uid, _ in users:
            d.join(uid)
        for k in range(40):
            d.events.append(put_state(admin_tok, d.room, "m.custom", f"k{k}", {"v": k}))
            d.n_sent += 1
        while d.n_sent < (LATE_EVENTS if d.room == late else EVENTS_PER_ROOM):
            d.step()

    run_threads([lambda d=d: fill(d) for d in drivers])
    sent = sum(d.n_sent for d in drivers)
    log(f"populated {len(rooms)} rooms: {sent} state changes in {time.time() - t0:.1f}s")
    save({
        "admin": [admin_id, admin_tok], "users": users, "rooms": rooms,
        "purge_rooms": rooms[:N_PURGE],
        "membership": [d.membership for d in drivers],
        "events": {d.room: d.events for d in drivers},
        "state_events_sent": sent,
    })


# ---------------------------------------------------------------- reading state through Synapse


def state_at(token, room, event_id):
    """The room state at an event, through Synapse's client API: /context returns
    the state at the last event it returns (limit=0: the event itself), read from
    state groups; /members?at= then gives the membership at that event's token."""
    ctx = http("GET", f"/_matrix/client/v3/rooms/{q(room)}/context/{q(event_id)}", token=token,
               query={"limit": "0", "filter": json.dumps({"lazy_load_members": False})})
    state = sorted([e["type"], e["state_key"], e["event_id"]] for e in ctx["state"])
    mem = http("GET", f"/_matrix/client/v3/rooms/{q(room)}/members", token=token,
               query={"at": ctx["end"]})
    members = sorted([e["state_key"], e["content"]["membership"], e["event_id"]]
                     for e in mem["chunk"])
    return {"state": state, "members": members}


def check_consistent(sample):
    """The members Synapse lists at an event must be the membership part of the state
    it returns at that event (guards the test itself: both must read that event's
    state)."""
    from_state = sorted(s[2] for s in sample["state"] if s[0] == "m.room.member")
    return from_state == sorted(m[2] for m in sample["members"])


def pick_samples(st):
    """Events to sample per room, spread over its history; in purged rooms only
    events after the purge point (earlier ones lose their state by design)."""
    rng = random.Random(7)
    samples, purge_points = [], {}
    for room in st["rooms"]:
        evs = st["events"][room]
        if room in st["purge_rooms"]:
            # The late room (see Purger) keeps most of its history: compressing the
            # rest must pay off while its first groups are still pending deletion.
            cut = int(len(evs) * (0.5 if room == st["purge_rooms"][0] else 0.1))
            purge_points[room] = evs[cut]
            evs = evs[cut + 1:]
        chosen = sorted(rng.sample(range(len(evs)), min(SAMPLES_PER_ROOM, len(evs))))
        samples += [{"room": room, "event_id": evs[i]} for i in chosen]
        samples.append({"room": room, "event_id": st["events"][room][-1]})
        if room in purge_points:
            # The oldest surviving event: its group's predecessor gets deleted, so
            # Synapse de-deltas it (or compression made it a snapshot first).
            samples.append({"room": room, "event_id": purge_points[room]})
    return samples, purge_points


def record():
    st = load()
    tok = st["admin"][1]
    psql("CALL sc_test.snapshot();")
    rows, _ = psql("SELECT (SELECT count(*) FROM sc_test.before), "
                   "(SELECT count(*) FROM state_groups_state);")
    n_groups, n_rows = (int(x) for x in rows[0])
    samples, purge_points = pick_samples(st)
    bad = 0
    for s in samples:
        s.update(state_at(tok, s["room"], s["event_id"]))
        if not check_consistent(s):
            bad += 1
            log(f"INCONSISTENT before compression (test bug?): {s['event_id']}")
    st.update(samples=samples, purge_points=purge_points,
              groups_recorded=n_groups, rows_recorded=n_rows)
    save(st)
    log(f"(a) recorded {n_groups} groups ({n_rows} rows), {len(samples)} sampled events")
    if bad:
        sys.exit(1)


# ---------------------------------------------------------------- (b) compression under load


class Writer(threading.Thread):
    """Keeps sending state changes to every room until stopped; samples the state
    Synapse reports right after some of them (then from its caches: what Synapse
    believes, to be compared with what it reads from the rewritten tables after the
    restart)."""

    def __init__(self, st):
        super().__init__(daemon=True)
        users, tok = [tuple(u) for u in st["users"]], st["admin"][1]
        self.drivers = []
        for i, room in enumerate(st["rooms"]):
            d = RoomDriver(room, tok, users, seed=1000 + i)
            d.membership = dict(st["membership"][i])
            self.drivers.append(d)
        self.token = tok
        self.stop = threading.Event()
        self.samples, self.error = [], None

    def run(self):
        try:
            n = 0
            while not self.stop.is_set():
                d = self.drivers[n % len(self.drivers)]
                before = len(d.events)
                d.step()
                n += 1
                if n % 15 == 0 and len(d.events) > before:
                    s = {"room": d.room, "event_id": d.events[-1], "live": True}
                    s.update(state_at(self.token, d.room, d.events[-1]))
                    self.samples.append(s)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e

    @property
    def sent(self):
        return sum(d.n_sent for d in self.drivers)


def purge_history(tok, room, point):
    """Purges `room`'s history before the event `point` through the admin API (Synapse
    marks the groups only purged events used in state_groups_pending_deletion), then
    moves those marks' insertion_ts back past DELAY_BEFORE_DELETION_MS, so Synapse's
    deletion loop takes them on its next run. Returns the marked groups."""
    r = http("POST", f"/_synapse/admin/v1/purge_history/{q(room)}",
             {"delete_local_events": True, "purge_up_to_event_id": point}, tok)
    while True:
        status = http("GET", f"/_synapse/admin/v1/purge_history_status/{r['purge_id']}",
                      token=tok)["status"]
        if status != "active":
            break
        time.sleep(0.3)
    if status != "complete":
        raise RuntimeError(f"purge_history of {room}: {status}")
    rows, _ = psql("SELECT d.state_group FROM state_groups_pending_deletion d "
                   "JOIN state_groups g ON g.id = d.state_group WHERE g.room_id = :'room';",
                   {"room": room})
    marked = [int(r[0]) for r in rows]
    psql("UPDATE state_groups_pending_deletion SET insertion_ts = insertion_ts - :ms "
         "WHERE state_group = ANY(:'ids'::bigint[]);",
         {"ms": DELAY_BEFORE_DELETION_MS + 60_000, "ids": id_array(marked)})
    return marked


class Purger(threading.Thread):
    """Purges history (Synapse marks the groups only old events used as pending
    deletion) and has Synapse's own deletion loop delete them while compression runs.

    Synapse deletes a group only DELAY_BEFORE_DELETION_MS (10 minutes, a class
    constant, no config option) after marking it, from a loop that runs once a
    minute. We move the marks' insertion_ts back past that delay and change nothing
    else: the deletion (locks, re-checks, de-delta of surviving children, deletes) is
    Synapse's own code and transaction.

    Two rounds. Room 1 is purged at once; when Synapse has deleted its groups we
    know when its loop runs (tick1). Room 2 is purged right after, so Synapse
    deletes its groups at tick1 + 60 s; room 2 is left uncompressed until then and
    its first compression is held open across that moment (see stress()), so
    Synapse's deletion and de-delta run against an uncommitted rewrite of the room."""

    def __init__(self, st):
        super().__init__(daemon=True)
        self.st, self.error = st, None
        self.rounds = []  # per purged room: {room, marked, t_backdated, t_deleted}
        self.tick1 = None
        self.stop = threading.Event()

    def purge(self, room):
        point = self.st["purge_points"][room]
        marked = purge_history(self.st["admin"][1], room, point)
        rnd = {"room": room, "marked": marked, "t_backdated": time.time(), "t_deleted": None}
        self.rounds.append(rnd)
        log(f"purged {room} up to {point}: {len(marked)} groups pending deletion, "
            "marks backdated")
        return rnd

    def wait_deleted(self, rnd, limit):
        while time.time() < limit and not self.stop.is_set():
            if not still_pending(rnd["marked"]):
                rnd["t_deleted"] = time.time()
                log(f"Synapse deleted the pending groups of {rnd['room']}")
                return True
            time.sleep(0.2)
        return False

    def run(self):
        try:
            limit = time.time() + STRESS_MAX_S
            time.sleep(3)  # compression is under way
            rooms = self.st["purge_rooms"]
            if not self.wait_deleted(self.purge(rooms[0]), limit):
                return
            self.tick1 = self.rounds[0]["t_deleted"]
            for room in rooms[1:]:
                self.purge(room)
            for rnd in self.rounds[1:]:
                self.wait_deleted(rnd, limit)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e

    @property
    def done(self):
        return bool(self.rounds) and all(r["t_deleted"] for r in self.rounds) \
            and len(self.rounds) == len(self.st["purge_rooms"])


def id_array(ids):
    return "{" + ",".join(map(str, ids)) + "}"


def still_pending(ids):
    rows, _ = psql("SELECT count(*) FROM state_groups_pending_deletion "
                   "WHERE state_group = ANY(:'ids'::bigint[]);", {"ids": id_array(ids)})
    return int(rows[0][0])


COMPRESS_SQL = """SELECT room_id, state_groups, groups_changed, groups_skipped, rows_before,
       rows_after, written, elapsed_ms FROM compress_room(:'room');"""
# The held variant: the same call, its transaction kept open HOLD_S seconds, like a
# long compression of a big room.
HOLD_SQL = "BEGIN;\n" + COMPRESS_SQL + "\nSELECT pg_sleep(:hold) \\g /dev/null\nCOMMIT;"
HOLD_S = 8


SCHEDULED_SQL = """SET synapse_compress.chunk_pause = 0;
SET synapse_compress.chunk_size = 50;
CALL compress_database();"""


def compress(room, clog, hold=False):
    """One compress_room call in its own transaction; returns its row or the error."""
    rows, p = psql(HOLD_SQL if hold else COMPRESS_SQL, {"room": room, "hold": HOLD_S}, check=False)
    clog.write(f"--- {time.strftime('%H:%M:%S')} compress_room({room}) hold={hold} rc={p.returncode}\n")
    clog.write(p.stdout + p.stderr)
    clog.flush()
    if p.returncode != 0:
        return None, p.stderr.strip()
    return rows[0], None


def stress():
    st = load()
    writer, purger = Writer(st), Purger(st)
    # The late room: purged after tick1, compressed first across Synapse's next tick.
    late = st["purge_rooms"][-1] if len(st["purge_rooms"]) > 1 else None
    results = {room: [] for room in st["rooms"]}  # per room: every call's row
    errors, passes, passes_after, hold, held_wrote = [], 0, 0, None, None
    t0 = time.time()
    writer.start()
    purger.start()

    def run(room, clog, held=False):
        row, err = compress(room, clog, held)
        if err:
            errors.append(f"compress_room({room}): {err}")
            log(f"compress_room ERROR: {err}")
        else:
            results[room].append(row)
        return row

    with open(os.path.join(LOG_DIR, "compress.log"), "w") as clog:
        while True:
            for room in st["rooms"]:
                if room == late and hold is None:
                    # Start 4 s before Synapse's next deletion tick, hold 8 s.
                    if purger.tick1 is None or time.time() < purger.tick1 + 56:
                        continue
                    hold = [time.time(), None]
                    row = run(room, clog, held=True)
                    hold[1] = time.time()
                    held_wrote = bool(row) and row[6] == "t"
                    log(f"held compression of {late}: {hold[1] - hold[0]:.1f}s, result {row}")
                    continue
                run(room, clog)
            # The scheduled path too (what the background worker runs): small chunks,
            # one transaction each, beside the same writer and deletions.
            _, p = psql(SCHEDULED_SQL, check=False)
            clog.write(f"--- {time.strftime('%H:%M:%S')} compress_database rc={p.returncode}\n")
            clog.write(p.stdout + p.stderr)
            if p.returncode != 0:
                errors.append(f"compress_database: {p.stderr.strip()}")
                log(f"compress_database ERROR: {p.stderr.strip()}")
            passes += 1
            passes_after += purger.done
            if writer.error or purger.error or not purger.is_alive() and not purger.done:
                break
            # Two more passes once Synapse has deleted: compression over de-delta'd groups.
            if passes_after >= 2 or time.time() - t0 > STRESS_MAX_S:
                break
    writer.stop.set()
    purger.stop.set()
    writer.join()
    purger.join()
    for name, th in (("writer", writer), ("purger", purger)):
        if th.error:
            errors.append(f"{name} failed: {th.error!r}")
    marked = [g for r in purger.rounds for g in r["marked"]]
    deleted = 0
    if marked:
        rows, _ = psql("SELECT count(*) FROM unnest(:'ids'::bigint[]) g "
                       "WHERE NOT EXISTS (SELECT 1 FROM state_groups WHERE id = g);",
                       {"ids": id_array(marked)})
        deleted = int(rows[0][0])
    if not purger.done or not deleted:
        errors.append(f"Synapse did not delete the purged groups within {STRESS_MAX_S:.0f}s "
                      f"(rounds {[(r['room'], len(r['marked']), bool(r['t_deleted'])) for r in purger.rounds]})")
    overlap = None
    if hold and hold[1] and late:
        rnd = next(r for r in purger.rounds if r["room"] == late)
        overlap = deletion_during(late, hold)
        log(f"Synapse's deletion in {late} {'ran' if overlap else 'did NOT run'} while the held "
            f"compression was open ({time.strftime('%H:%M:%S', time.localtime(hold[0]))}"
            f"-{time.strftime('%H:%M:%S', time.localtime(hold[1]))}; {len(rnd['marked'])} groups)")
        if not (overlap and held_wrote):
            # Timing, not correctness: the checks below still hold, the race was just
            # not exercised this time.
            log("WARNING: the held compression wrote nothing or Synapse's deletion missed "
                "its window: compression against Synapse's de-delta was not exercised")
    elif late:
        errors.append(f"the held compression of {late} never ran")
    summary = {}
    for room, rs in results.items():
        w = [r for r in rs if r[6] == "t"]
        summary[room] = {
            "calls": len(rs), "written": len(w),
            "groups_changed": sum(int(r[2]) for r in w),
            "rows_saved": sum(int(r[4]) - int(r[5]) for r in w),
            "first_written": w[0] if w else None}
    if os.environ.get("E2E_SABOTAGE") == "1":
        sabotage(st["rooms"][-1])
    stats = synapse_log_stats()
    log(f"Synapse's log: {stats['de_delta']} groups de-delta'd by its deletion, "
        f"{stats['txn_retries']} deletion transactions retried ([TXN OPERROR])")
    st.update(synapse_de_delta=stats["de_delta"], synapse_txn_retries=stats["txn_retries"],
              held_compression_wrote=held_wrote, deletion_during_held_compression=overlap)
    st.update(live_samples=writer.samples, stress_errors=errors, compress=summary,
              stress_sent=writer.sent, marked=len(marked), deleted=deleted,
              passes=passes)
    save(st)
    log(f"(b) {passes} compression passes in {time.time() - t0:.0f}s, writer sent "
        f"{writer.sent} state changes, {len(writer.samples)} live samples, "
        f"{len(marked)} groups marked pending deletion, {deleted} deleted by Synapse")
    for room, s in summary.items():
        log(f"    {room}: {s['calls']} calls, {s['written']} wrote, {s['groups_changed']} groups "
            f"changed, {s['rows_saved']} rows saved; first write "
            f"(room_id, groups, changed, skipped, rows_before, rows_after, written, ms): {s['first_written']}")
    for e in errors:
        log(f"FAIL: {e}")
    sys.exit(1 if errors else 0)


def sabotage(room):
    """Self-test of this harness (E2E_SABOTAGE=1): lose one row the way a faulty
    rewrite would, from the room's oldest full snapshot; (c) must then fail."""
    rows, _ = psql("""
        DELETE FROM state_groups_state WHERE ctid = (
          SELECT s.ctid FROM state_groups_state s
          WHERE s.room_id = :'room' AND s.type = 'm.custom'
            AND NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.state_group = s.state_group)
          ORDER BY s.state_group LIMIT 1)
        RETURNING state_group, type, state_key;""", {"room": room})
    log(f"SABOTAGE (E2E_SABOTAGE=1): deleted row {rows}")


def synapse_log_stats():
    """What Synapse's deletion did, from its log: groups de-delta'd (rewritten as full
    snapshots because their predecessor was deleted) and deletion transactions retried
    after a conflict ([TXN OPERROR], e.g. a serialization failure against compression;
    Synapse retries those up to 5 times)."""
    stats = {"de_delta": 0, "txn_retries": 0}
    with open(os.path.join(LOG_DIR, "homeserver.log"), encoding="utf8", errors="replace") as f:
        for line in f:
            stats["de_delta"] += "[purge] de-delta-ing remaining state group " in line
            stats["txn_retries"] += "[TXN OPERROR] {purge_unreferenced_state_groups" in line
    return stats


def deletion_during(room, window):
    """Whether Synapse's log shows its deletion of `room`'s groups starting inside
    the time window (Synapse logs '[purge] deleting state groups for room ...')."""
    path = os.path.join(LOG_DIR, "homeserver.log")
    with open(path, encoding="utf8", errors="replace") as f:
        for line in f:
            if "[purge] deleting state groups for room " + room in line:
                t = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
                if window[0] - 1 <= t <= window[1]:
                    return True
    return False


# ---------------------------------------------------------------- (c) after restart


SAME_STATE_SQL = """
CREATE TEMP TABLE after_fp AS SELECT * FROM sc_test.fingerprints();
SELECT (SELECT count(*) FROM sc_test.before),
       (SELECT count(*) FROM sc_test.before b JOIN after_fp a USING (state_group)),
       (SELECT count(*) FROM sc_test.before b JOIN after_fp a USING (state_group)
         WHERE (a.n, a.digest) IS DISTINCT FROM (b.n, b.digest)),
       (SELECT coalesce(string_agg(state_group::text, ',' ORDER BY state_group), '')
          FROM (SELECT state_group FROM sc_test.before b JOIN after_fp a USING (state_group)
                WHERE (a.n, a.digest) IS DISTINCT FROM (b.n, b.digest) LIMIT 10) x),
       (SELECT count(*) FROM after_fp),
       (SELECT count(*) FROM state_groups_state);
"""


def diff(old, new):
    o, n = {tuple(x) for x in old}, {tuple(x) for x in new}
    return f"missing {sorted(o - n)[:3]}, extra {sorted(n - o)[:3]}"


def structure_failures(phase):
    """The tree is sound, and no edge, row or predecessor of a missing group."""
    failures = []
    _, p = psql("CALL sc_test.assert_tree(175);", check=False)  # 175 = sum of levels 100,50,25
    if p.returncode:
        failures.append(f"tree check: {p.stderr.strip()}")
    # A predecessor that no longer exists (e.g. chosen while pending deletion, then
    # deleted by Synapse) silently drops state; rows or edges of a deleted group mean
    # a write raced Synapse's deletion.
    rows, _ = psql("""
        SELECT (SELECT count(*) FROM state_group_edges e
                 WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = e.prev_state_group)),
               (SELECT count(*) FROM state_groups_state s
                 WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = s.state_group)),
               (SELECT count(*) FROM state_group_edges e
                 WHERE NOT EXISTS (SELECT 1 FROM state_groups g WHERE g.id = e.state_group));""")
    dangling, orphan_rows, orphan_edges = rows[0]
    log(f"{phase} edges to missing groups: {dangling}, rows of missing groups: {orphan_rows}, "
        f"edges of missing groups: {orphan_edges}")
    if (dangling, orphan_rows, orphan_edges) != ("0", "0", "0"):
        failures.append(f"dangling predecessors {dangling}, orphan rows {orphan_rows}, "
                        f"orphan edges {orphan_edges}")
    return failures


def verify():
    st = load()
    tok = st["admin"][1]
    failures = []
    rows, _ = psql(SAME_STATE_SQL)
    recorded, survived, changed, examples, groups_now, rows_now = rows[0]
    log(f"(c) groups recorded in (a): {recorded}, surviving: {survived}, "
        f"resolving differently: {changed}; groups now {groups_now}, rows now {rows_now}")
    if int(changed):
        failures.append(f"{changed} surviving groups resolve differently (e.g. {examples})")
    # Every group the purge left must still be there (compression deletes nothing).
    gone = int(recorded) - int(survived)
    if gone > st["deleted"]:
        failures.append(f"{gone} recorded groups are gone but Synapse deleted only {st['deleted']}")
    failures += structure_failures("(c)")
    bad_api = 0
    samples = st["samples"] + st["live_samples"]
    for s in samples:
        now = state_at(tok, s["room"], s["event_id"])
        for what in ("state", "members"):
            if now[what] != s[what]:
                bad_api += 1
                kind = "live" if s.get("live") else "recorded"
                failures.append(f"{what} at {s['event_id']} ({kind}) differs: {diff(s[what], now[what])}")
    summary = {
        "groups_recorded": int(recorded), "groups_checked": int(survived),
        "groups_resolving_differently": int(changed), "groups_deleted_by_synapse": st["deleted"],
        "events_sampled": len(samples), "api_mismatches": bad_api,
        "state_events_sent": st["state_events_sent"] + st["stress_sent"],
    }
    st["verify"] = summary
    st["verify_failures"] = failures
    save(st)
    log(f"(c) {len(samples)} sampled events checked through the client API, {bad_api} mismatches")
    for f in failures[:20]:
        log(f"FAIL: {f}")
    sys.exit(1 if failures else 0)


# ---------------------------------------------------------------- (d) purge again, re-compress


ROOM_ROWS_SQL = """
SELECT (SELECT count(*) FROM state_groups_state s JOIN state_groups g ON g.id = s.state_group
         WHERE g.room_id = :'room'),
       (SELECT count(*) FROM state_groups WHERE room_id = :'room'),
       (SELECT count(*) FROM state_groups_state);"""

# The purge point: among the room's recorded events, the one whose state group the most
# edges cross (predecessor below it, group at or above it). Purging there leaves that
# many surviving groups whose predecessor Synapse deletes, i.e. that it de-deltas; ties
# go to the most recent event.
PURGE_POINT_SQL = """
WITH pts AS (
  SELECT t.event_id, t.ord, e.state_group
  FROM unnest(:'evs'::text[]) WITH ORDINALITY AS t(event_id, ord)
  JOIN event_to_state_groups e USING (event_id))
SELECT p.event_id, p.state_group,
       (SELECT count(*) FROM state_group_edges x JOIN state_groups g ON g.id = x.state_group
         WHERE g.room_id = :'room' AND x.prev_state_group < p.state_group
           AND x.state_group >= p.state_group) AS crossing
FROM pts p ORDER BY crossing DESC, p.ord DESC LIMIT 1;"""


def groups_deleted_counter():
    """state_groups' deleted-tuple counter: what the scheduled run's revisit reads."""
    rows, _ = psql("SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = 'state_groups'::regclass;")
    return int(rows[0][0])


def scheduled_run(clog, what):
    """CALL compress_database() (SCHEDULED_SQL, the worker's path: run start with its
    revisit, then chunks), its LOG lines included; returns (ok, output)."""
    _, p = psql("SET client_min_messages = log;\n" + SCHEDULED_SQL, check=False)
    clog.write(f"--- {time.strftime('%H:%M:%S')} compress_database ({what}) rc={p.returncode}\n")
    clog.write(p.stdout + p.stderr)
    clog.flush()
    return p.returncode == 0, p.stdout + p.stderr


def repurge():
    """(d) Synapse undoes compression and the next scheduled run redoes it. Purge a
    compressed room's history through the admin API; Synapse's own deletion loop deletes
    the groups only purged events used and rewrites their surviving children as full
    snapshots (de-delta); the next compress_database run finds those below the room's
    progress (src/revisit.rs) and compresses them again, every group's state kept."""
    st = load()
    tok = st["admin"][1]
    # A room (b) did not purge: its whole history is compressed.
    room = next((r for r in st["rooms"] if r not in st["purge_rooms"]), st["rooms"][0])
    failures = []
    figures = {}

    def fig(label):
        rows, _ = psql(ROOM_ROWS_SQL, {"room": room})
        r_rows, r_groups, total = (int(x) for x in rows[0])
        figures[label] = {"rows": r_rows, "groups": r_groups, "rows_all_rooms": total}
        log(f"(d) {label}: {room} has {r_groups} groups, {r_rows} rows "
            f"(state_groups_state: {total} rows in all rooms)")
        return r_rows

    with open(os.path.join(LOG_DIR, "compress.log"), "a") as clog:
        # What (b)'s writer sent after the last pass is compressed first.
        ok, out = scheduled_run(clog, "before the purge")
        if not ok:
            log(f"FAIL: compress_database before the purge: {out.strip()}")
            sys.exit(1)
        rows_compressed = fig("after compression")
        rows, _ = psql(PURGE_POINT_SQL, {"room": room, "evs": "{" + ",".join(st["events"][room]) + "}"})
        if not rows:
            log(f"FAIL: no recorded event of {room} has a state group")
            sys.exit(1)
        point, point_group, crossing = rows[0]
        rows, _ = psql("SELECT e.state_group FROM state_group_edges e "
                       "JOIN state_groups g ON g.id = e.state_group WHERE g.room_id = :'room';",
                       {"room": room})
        deltas_before = [int(r[0]) for r in rows]
        deleted0 = groups_deleted_counter()
        log_de_delta0 = synapse_log_stats()["de_delta"]
        marked = purge_history(tok, room, point)
        log(f"(d) purged {room} up to {point} (group {point_group}; {crossing} edges cross it): "
            f"{len(marked)} groups pending deletion, marks backdated")
        if not marked:
            log("FAIL: the purge marked no state group for deletion")
            sys.exit(1)
        # Synapse's loop (once a minute) deletes them in its own transaction; the run's
        # revisit reads the deleted-tuple counter, so wait for that too.
        t0, limit = time.time(), time.time() + REPURGE_MAX_S
        while True:
            pending, deleted = still_pending(marked), groups_deleted_counter()
            if pending == 0 and deleted > deleted0:
                break
            if time.time() > limit:
                log(f"FAIL: after {REPURGE_MAX_S:.0f}s {pending} of {len(marked)} marked groups "
                    f"still pending deletion, state_groups n_tup_del {deleted0} -> {deleted}")
                sys.exit(1)
            time.sleep(0.5)
        log(f"(d) Synapse deleted the marked groups after {time.time() - t0:.0f}s "
            f"(state_groups n_tup_del {deleted0} -> {deleted})")
        rows, _ = psql("SELECT x FROM unnest(:'ids'::bigint[]) x "
                       "WHERE EXISTS (SELECT 1 FROM state_groups g WHERE g.id = x) "
                       "AND NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.state_group = x) "
                       "ORDER BY x;", {"ids": id_array(deltas_before)})
        dedeltaed = [int(r[0]) for r in rows]
        log_de_delta = synapse_log_stats()["de_delta"] - log_de_delta0
        rows_dedelta = fig("after purge and de-delta")
        log(f"(d) groups Synapse de-deltaed (deltas before, full snapshots now): "
            f"{len(dedeltaed)} {dedeltaed[:10]}; its log says {log_de_delta}")
        if not dedeltaed:
            # Nothing to re-compress: the phase would prove nothing.
            log("FAIL: Synapse de-deltaed no group of the purged room")
            sys.exit(1)
        # Every group's resolved state now, to compare after the run.
        psql("CALL sc_test.snapshot();")
        ok, out = scheduled_run(clog, "after the de-delta")
        if not ok:
            failures.append(f"compress_database after the de-delta: {out.strip()}")
        sent_back = [line.strip() for line in out.splitlines() if "rooms sent back" in line]
        log(f"(d) next run's start: {sent_back[0] if sent_back else 'no room sent back'}")
    rows, _ = psql("SELECT outcome, groups_changed, rows_before, rows_after "
                   "FROM synapse_compress.runs ORDER BY run_id DESC LIMIT 1;")
    log(f"(d) that run (outcome, groups_changed, rows_before, rows_after): {rows[0]}")
    if rows[0][0] != "done":
        failures.append(f"the run after the de-delta ended {rows[0][0]!r}")
    rows_next = fig("after the next run")
    rows, _ = psql("SELECT count(*) FROM unnest(:'ids'::bigint[]) x "
                   "WHERE NOT EXISTS (SELECT 1 FROM state_group_edges e WHERE e.state_group = x);",
                   {"ids": id_array(dedeltaed)})
    log(f"(d) of the {len(dedeltaed)} de-deltaed groups, {rows[0][0]} are still full snapshots")
    rows, _ = psql(SAME_STATE_SQL)
    recorded, survived, changed, examples, _, _ = rows[0]
    log(f"(d) groups before the run: {recorded}, after: {survived}, resolving differently: {changed}")
    if int(changed):
        failures.append(f"{changed} groups resolve differently after the next run (e.g. {examples})")
    if survived != recorded:
        failures.append(f"{int(recorded) - int(survived)} groups disappeared during the run")
    failures += structure_failures("(d)")
    if not rows_next < rows_dedelta:
        failures.append(f"the next run did not bring the rows down: {rows_dedelta} -> {rows_next}")
    log(f"(d) rows of {room}: {rows_compressed} after compression, {rows_dedelta} after the "
        f"purge and de-delta, {rows_next} after the next run")
    st["repurge"] = {"room": room, "figures": figures, "dedeltaed": len(dedeltaed),
                     "failures": failures}
    save(st)
    for f in failures:
        log(f"FAIL: {f}")
    sys.exit(1 if failures else 0)


def summary():
    """key=value figures for run.sh's final report."""
    st = load()
    v = dict(st.get("verify", {}))
    comp = st.get("compress", {})
    v["compress_calls"] = sum(c["calls"] for c in comp.values())
    v["compress_writes"] = sum(c["written"] for c in comp.values())
    v["compress_rows_saved"] = sum(c["rows_saved"] for c in comp.values())
    rp = st.get("repurge")
    if rp:
        v["repurge_rows"] = "->".join(str(rp["figures"][k]["rows"]) for k in (
            "after compression", "after purge and de-delta", "after the next run")
            if k in rp["figures"])
        v["repurge_dedeltaed"] = rp["dedeltaed"]
    for k in ("held_compression_wrote", "deletion_during_held_compression",
              "synapse_de_delta", "synapse_txn_retries"):
        if k in st:
            v[k] = st[k]
    print(" ".join(f"{k}={v[k]}" for k in sorted(v)))


if __name__ == "__main__":
    {"populate": populate, "record": record, "stress": stress,
     "verify": verify, "repurge": repurge, "summary": summary}[sys.argv[1]]()
