"""The SQLite journal's run index: folded from the commits in batches behind a durable
watermark (the rowid of the last commit folded), in the same transactions as other writes.

Per commit, writing index rows inline cost ~28 % of durable throughput (random-key B-tree
pages in every transaction); a batch touches each page once. The catch-up runs in the
writer process while there is one (it decodes the rows itself), else in process, where the
journal hands it what it kept of the commits it landed (`unfolded`) so that those rows are
not decoded again.

Standard library only (with `runs` and `store`): the writer process imports no more.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from runtime.journal import runs as run_index

_from_json: Callable[[bytes | str], Any]
_to_json: Callable[[Any], bytes] | None
try:
    from pydantic_core import from_json as _from_json
    from pydantic_core import to_json as _to_json
except ImportError:  # a writer process started without site-packages
    _from_json, _to_json = json.loads, None

INDEX_BATCH = 1024  # commits folded per catch-up transaction (bounds its latency)
Decode = Callable[[bytes], Any]
Encode = Callable[[Any], bytes]
log = logging.getLogger("loom.journal")


def decode(doc: bytes | str) -> Any:
    """A stored document. pydantic-core reads ~200 levels of nesting but writes 254, so a
    deeper document, written by a path that did not refuse it, falls back to `json`
    (Python's recursion limit): never a row that can be written but not read back."""
    try:
        return _from_json(doc)
    except ValueError as exc:
        if "recursion limit" not in str(exc):
            raise
        return json.loads(doc)


def _encode(value: Any) -> bytes:
    if _to_json is not None:  # 3x faster
        return _to_json(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def catch_up(db: sqlite3.Connection, unfolded: dict[tuple[str, int], Any],
             decode: Decode = decode, encode: Encode = _encode, *,
             limit: int = INDEX_BATCH) -> int:
    """Fold the next `limit` commits past the watermark into the index: in Python first
    (each run's row read once, if it existed before the batch), then a few statements.
    Returns how many commits it passed: `limit` means more to fold."""
    mark = db.execute("SELECT value FROM meta WHERE key = 'runs_indexed'").fetchone()[0]
    rows = db.execute("SELECT rowid, actor, seq FROM commits WHERE rowid > ? ORDER BY "
                      "rowid LIMIT ?", (mark, limit)).fetchall()
    have = [unfolded.pop((actor, seq), None) for _, actor, seq in rows]
    docs = _docs(db, [r[0] for r, c in zip(rows, have, strict=True) if c is None])
    commits: list[tuple[tuple[str, str], Any]] = []
    fresh: dict[tuple[str, str], bool] = {}  # run -> its first commit is in this batch
    for (rowid, actor, seq), known in zip(rows, have, strict=True):
        mark = rowid
        try:
            commit = known if known is not None else decode(docs[rowid])
        except ValueError:  # one odd commit must not stop the index for good
            log.exception("run index: commit %s#%s skipped", actor, seq)
            continue
        run = commit.get("run") if isinstance(commit, dict) else None
        if isinstance(run, dict):
            key = (str(commit.get("actor")), str(run.get("msg")))
            fresh.setdefault(key, run.get("start") == commit.get("seq"))
            commits.append((key, commit))
    if len(rows) < limit:  # caught up: what is left was folded by another process
        unfolded.clear()  # (its rows are behind the watermark now)
    stored = _stored_runs(db, {k for k, first in fresh.items() if not first}, decode)
    folded: dict[tuple[str, str], run_index.Run] = {}
    for key, commit in commits:
        try:
            row = run_index.fold(folded.get(key, stored.get(key)), commit)
        except Exception:  # one odd commit must not stop the index for good
            log.exception("run index: commit %s#%s skipped", *key)
            continue
        if row is not None:
            folded[key] = row
    write_runs(db, stored, folded, encode)
    db.execute("UPDATE meta SET value = ? WHERE key = 'runs_indexed'", (mark,))
    return len(rows)


def _docs(db: sqlite3.Connection, rowids: list[int]) -> dict[int, bytes]:
    """The documents of these commits, by rowid."""
    found: dict[int, bytes] = {}
    for i in range(0, len(rowids), 400):
        part = rowids[i:i + 400]
        found.update(db.execute(f"SELECT rowid, doc FROM commits WHERE rowid IN "
                                f"({','.join('?' * len(part))})", part).fetchall())
    return found


def _stored_runs(db: sqlite3.Connection, keys: set[tuple[str, str]], decode: Decode
                 ) -> dict[tuple[str, str], run_index.Run]:
    """The index rows of these runs, as stored (`last_seq` is not kept current there: -1, so
    that every commit folds)."""
    found: dict[tuple[str, str], run_index.Run] = {}
    wanted = sorted(keys)
    for i in range(0, len(wanted), 400):
        part = wanted[i:i + 400]
        values = ",".join(["(?,?)"] * len(part))
        for actor, msg, doc in db.execute(
                f"SELECT r.actor, r.msg, r.doc FROM runs r JOIN (VALUES {values}) AS v ON "
                "r.actor = v.column1 AND r.msg = v.column2", [x for k in part for x in k]):
            row = decode(doc)
            row["last_seq"] = -1
            found[(actor, msg)] = row
    return found


def write_runs(db: sqlite3.Connection, stored: dict[tuple[str, str], run_index.Run],
               folded: dict[tuple[str, str], run_index.Run], encode: Encode = _encode) -> None:
    """Insert the new rows; rewrite a stored one only if something a query sees changed
    (status, waits, activities, the end)."""
    new, changed, activities = [], [], []
    for key, row in folded.items():
        before = stored.get(key)
        if before is None:
            new.append((row["actor"], row["msg"], row["type"], row["actor"].partition("/")[2],
                        row["status"], row["started"], row["ended"], encode(row)))
            added = row["activities"]
        elif {**row, "last_seq": 0} != {**before, "last_seq": 0}:
            changed.append((row["status"], row["ended"], encode(row), *key))
            added = run_index.added_activities(before, row)
        else:
            continue
        activities += [(name, row["started"], *key) for name in added]
    if new:
        db.executemany("INSERT INTO runs (actor, msg, type, ident, status, started, ended, "
                       "doc) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (actor, msg) DO UPDATE SET "
                       "status = excluded.status, ended = excluded.ended, doc = excluded.doc",
                       new)  # a row already there (a commit folded twice) must not jam the index
    if changed:
        db.executemany("UPDATE runs SET status=?, ended=?, doc=? WHERE actor=? AND msg=?",
                       changed)
    if activities:
        db.executemany("INSERT OR IGNORE INTO run_activities (activity, started, actor, msg) "
                       "VALUES (?,?,?,?)", activities)
