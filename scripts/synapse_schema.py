#!/usr/bin/env python3
"""Build a fresh-database Synapse schema (PostgreSQL) from the genuine wheel.

usage: synapse_schema.py WHEEL OUT.sql

Mirrors synapse/storage/prepare_database.py (_setup_new_database followed by
_upgrade_existing_database(is_empty=True)) for one physical database holding the
"main" and "state" stores (plus "common"), so tests run against the real schema
rather than a hand-written copy. Python 3 stdlib only.
"""
import ast
import hashlib
import os
import re
import sys
import zipfile

ROOT = "synapse/storage/schema/"
DATABASES = ("main", "state")  # prepare_database's default: one DB for both stores
ENGINE_EXT, OTHER_EXTS = ".postgres", (".sqlite", ".postgres")
# Same replacement as synapse/storage/engines/postgres.py executescript().
PLACEHOLDERS = {
    "$%AUTO_INCREMENT_PRIMARY_KEY%$": "BIGINT PRIMARY KEY GENERATED ALWAYS AS IDENTITY",
}
# Objects this project relies on: a skipped .py delta touching them would make the
# fixture wrong, so that is a hard error instead of a comment.
GUARDED = re.compile(
    r"\b(state_groups\w*|state_group_edges|state_group_id_seq|rooms|event_to_state_groups)\b"
)
# What the skipped .py deltas of 1.163.2 would do on an *empty PostgreSQL* database
# (read by hand from the wheel); anything not listed is flagged as unreviewed.
REVIEWED = {
    "73/10_update_sqlite_fts4_tokenizer.py": "run_create is SQLite-only: nothing on PostgreSQL",
    "74/04_membership_tables_event_stream_ordering_triggers.py": "run_create adds function "
    "check_event_stream_ordering() and BEFORE INSERT OR UPDATE triggers on current_state_events, "
    "local_current_membership, room_memberships: MISSING here",
    "78/01_validate_and_update_profiles.py": "run_upgrade only: nothing on a fresh database",
    "78/02_validate_and_update_user_filters.py": "run_upgrade only: nothing on a fresh database",
    "78/03_remove_unused_indexes_user_filters.py": "defines run_update, which Synapse never calls",
    "78/03event_extremities_constraints.py": "run_create adds NOT VALID deferred FK "
    "event_forward_extremities_event_id (-> events.event_id) and a background_updates row "
    "(7803): MISSING here",
    "78/04_add_full_user_id_index_user_filters.py": "run_create is SQLite-only: nothing on PostgreSQL",
    "79/04_mitigate_stream_ordering_update_race.py": "run_create acts only if background update "
    "replace_stream_ordering_column is pending, never on a fresh database: nothing",
    "93/04_make_delayed_event_content_text.py": "run_create alters delayed_events.content from "
    "bytea to text: MISSING here (delayed_events.content stays bytea)",
}


def module_constant(src, name):
    """Value of a top-level `NAME = <literal>` in a Python source (no import needed)."""
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    sys.exit(f"{name} not found")


def main(wheel, out):
    zf = zipfile.ZipFile(wheel)
    files = {n[len(ROOT):]: n for n in zf.namelist() if n.startswith(ROOT) and not n.endswith("/")}
    read = lambda rel: zf.read(files[rel]).decode("utf-8")

    def listdir(d):
        """Immediate children (files and subdirectories) of a schema directory."""
        pre = d.rstrip("/") + "/"
        return sorted({r[len(pre):].split("/")[0] for r in files if r.startswith(pre)})

    schema_version = module_constant(read("__init__.py"), "SCHEMA_VERSION")
    compat_version = module_constant(read("__init__.py"), "SCHEMA_COMPAT_VERSION")
    full_ver = max(int(d) for d in listdir("common/full_schemas") if d.isdigit() and int(d) <= schema_version)

    body, skipped = [], []

    def emit_sql(rel):
        text = read(rel)
        for ph, repl in PLACEHOLDERS.items():
            text = text.replace(ph, repl)
        unknown = re.search(r"\$%\w+%\$", text)
        if unknown:
            sys.exit(f"{rel}: unknown placeholder {unknown.group()}")
        # psql (unlike psycopg2, which Synapse uses) needs each file's last statement
        # terminated, or it would run into the next file's first statement.
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        code = "\n".join(l.split("--")[0] for l in code.splitlines()).strip()
        body.append(f"\n-- ==== {rel}\n{text.rstrip()}\n" + (";\n" if code and not code.endswith(";") else ""))

    def record(sql):
        body.append(sql + "\n")

    # 1. _get_or_create_schema_state: bookkeeping tables.
    emit_sql("common/schema_version.sql")

    # 2. _setup_new_database: full schemas of common + each store, sorted by
    #    (file name, path) across directories; *.sql and *.sql.postgres only.
    entries = []
    for d in [f"common/full_schemas/{full_ver}"] + [f"{db}/full_schemas/{full_ver}" for db in DATABASES]:
        entries += [(name, f"{d}/{name}") for name in listdir(d)]
    for name, rel in sorted(entries):
        if name.endswith(".sql") or name.endswith(".sql" + ENGINE_EXT):
            emit_sql(rel)
    record(f"INSERT INTO schema_version (version, upgraded) VALUES ({full_ver}, false);")

    # 3. _upgrade_existing_database(is_empty=True): compat version first, then each
    #    version after the full schema; per version, delta files of common + stores
    #    merged and sorted by (file name, path).
    record("DELETE FROM schema_compat_version;")
    record(f"INSERT INTO schema_compat_version (compat_version) VALUES ({compat_version});")
    for v in range(full_ver + 1, schema_version + 1):
        record(f"\n-- ======== v{v}\nDELETE FROM schema_version;")
        record(f"INSERT INTO schema_version (version, upgraded) VALUES ({v}, true);")
        entries = []
        for store in ("common",) + DATABASES:
            entries += [(name, f"{store}/delta/{v}/{name}", store) for name in listdir(f"{store}/delta/{v}")]
        names = [e[0] for e in entries]
        if len(names) != len(set(names)):
            sys.exit(f"duplicate delta file names in v{v}")  # Synapse refuses too
        for name, rel, store in sorted(entries):
            root, ext = os.path.splitext(name)
            if ext == ".py":
                # Needs Synapse's Python modules: cannot run here. Only run_create
                # matters for an empty database (run_upgrade is skipped by Synapse).
                src = read(rel)
                hooks = [h for h in ("run_create", "run_upgrade") if f"def {h}(" in src]
                hit = sorted(set(GUARDED.findall(src)))
                if "run_create" in hooks and (store == "state" or hit):
                    sys.exit(f"{rel}: skipped .py delta touches {store} store / {hit}: fixture would be wrong")
                skipped.append((f"{v}/{name}", store, hooks, hit))
                continue  # not recorded in applied_schema_deltas: it was not applied
            if ext == ".pyc" or name == "__pycache__":
                continue
            if ext == ".sql" or (ext == ENGINE_EXT and root.endswith(".sql")):
                emit_sql(rel)
            elif ext in OTHER_EXTS and root.endswith(".sql"):
                continue  # other engine's file
            else:
                print(f"warning: ignoring {rel}", file=sys.stderr)
                continue
            record(f"INSERT INTO applied_schema_deltas (version, file) VALUES ({v}, '{v}/{name}');")

    digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
    head = [
        f"-- Synapse schema for a fresh PostgreSQL database, generated by scripts/synapse_schema.py",
        f"-- from {os.path.basename(wheel)} (sha256 {digest}).",
        f"-- SCHEMA_VERSION {schema_version}, full schema v{full_ver}, SCHEMA_COMPAT_VERSION {compat_version};",
        f"-- stores: common + {' + '.join(DATABASES)}. Order as prepare_database: schema_version.sql, full",
        f"-- schemas, then per version the delta files of all stores sorted together by file name",
        f"-- (*.sql and *.sql.postgres applied; *.sql.sqlite ignored). One transaction.",
        f"--",
        f"-- Skipped .py deltas (need Synapse's Python code; not recorded in applied_schema_deltas):",
    ]
    for rel, store, hooks, hit in skipped:
        note = REVIEWED.get(rel, "NOT REVIEWED: " + ("defines run_create" if "run_create" in hooks else "no run_create"))
        head.append(f"--   {store}/delta/{rel}: {note}")
    head += [
        f"-- Does any skipped one touch the state store, rooms or event_to_state_groups? No: no",
        f"-- skipped run_create is in the state store or names those tables (the generator checks",
        f"-- this and fails otherwise), and every later SQL delta still applies without them.",
        f"-- Checked for 1.163.2: pg_dump -s of this vs Synapse's own prepare_database differs only",
        f"-- by the three MISSING items above; data only by their applied_schema_deltas rows and",
        f"-- the background_updates row 7803.",
        "",
        "BEGIN;",
        "SET LOCAL client_min_messages = warning;",
    ]
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(head) + "\n" + "".join(body) + "\nCOMMIT;\n")
    os.replace(out + ".tmp", out)  # atomic: a half-written fixture never looks fresh


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    main(*sys.argv[1:])
