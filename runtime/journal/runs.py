"""The run index: one row per run (actor, message id), kept with the commits, so listing and
filtering runs never reads a journal.

Every store derives the row from the commit documents it is given and nothing else (the
actors runtime is not asked): `fold(row, commit)` is the one rule, used by all stores and by
the SQLite migration that backfills the index.

A run's status after a commit:

- the commit has `kind` (it completed the run): that kind, `completed`, `failed`,
  `rejected`, `cancelled` or `dead_lettered`; `ended` is the commit's `ts`, and `error`
  its code, type and message;
- else `parked` if the run has an open wait, `running` otherwise. A wait opens with an
  event `timer.start` (a durable sleep) or `activity.retry`/`compensation.retry` (a durable
  back-off): on a timer; `wait.start` (`ctx.wait_for_event`, its timeout is a timer too)
  or `ask.sent` (waiting for the reply): on an event. It closes with `timer.fired`,
  `wait.event`, `wait.timeout` or `ask.reply` at the same step. `waiting` says `timer` or
  `event` (`event` if any open wait is on an event). `run.cancelled` closes every wait (the
  run unwinds and compensates: running).

Open waits are carried from commit to commit in the row, so a run whose parallel branch
still waits while another recorded a step stays parked. The index cannot see an activity
in flight (its start is not journaled): a run with one branch parked and another inside an
activity call shows `parked` until its next commit.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the writer process imports this module: no more than the standard library
    from runtime.journal.store import Commit

Run = dict[str, Any]
STATUSES = ("running", "parked", "completed", "failed", "rejected", "cancelled",
            "dead_lettered")
ENDED = frozenset(STATUSES[2:])
OPENS = {"timer.start": "timer", "activity.retry": "timer", "compensation.retry": "timer",
         "wait.start": "event", "ask.sent": "event"}
CLOSES = frozenset({"timer.fired", "wait.event", "wait.timeout", "ask.reply"})
SHOWN = ("actor", "type", "msg", "handler", "status", "waiting", "started", "ended",
         "first_seq", "last_seq", "activities", "error")
MAX_LIMIT = 1000


def fold(row: Run | None, commit: Commit) -> Run | None:
    """The run row after `commit` (None for a commit of no run: a stray-timer sweep). A
    commit at or below the row's `last_seq` changes nothing (folding again is harmless)."""
    run = commit.get("run")
    if not isinstance(run, dict) or "msg" not in run:
        return None
    seq = int(commit["seq"])
    if row is not None and seq <= int(row["last_seq"]):
        return row
    actor = str(commit["actor"])
    if row is None:
        row = {"actor": actor, "type": actor.partition("/")[0], "msg": str(run["msg"]),
               "handler": None, "status": "running", "waiting": None,
               "started": float(run.get("ts") or commit.get("ts") or 0.0), "ended": None,
               "first_seq": int(run.get("start", seq)), "last_seq": seq, "activities": [],
               "error": None, "open": {}}
    else:
        row = {**row, "open": dict(row.get("open") or {}),
               "activities": list(row.get("activities") or [])}
    message = commit.get("message")
    if isinstance(message, dict) and row["handler"] is None:
        row["handler"] = message.get("handler") or message.get("name")
    opened: dict[str, str] = row["open"]
    for event in commit.get("events") or ():
        op = str(event.get("op", ""))
        step = str(event.get("step"))
        if op.startswith(("activity.", "compensation.")):
            name = str(event.get("name", ""))
            if name and name not in row["activities"]:
                row["activities"].append(name)
        if op in OPENS:
            opened[step] = OPENS[op]
        elif op in CLOSES or op.endswith((".done", ".failed")):
            opened.pop(step, None)
        elif op == "run.cancelled":  # every wait fails: the run unwinds (compensates)
            opened.clear()
    row["last_seq"] = seq
    kind = commit.get("kind")
    if kind:
        row["status"] = str(kind)
        row["ended"] = float(commit.get("ts") or 0.0)
        row["waiting"] = None
        row["open"] = {}
        err = commit.get("error")
        if isinstance(err, dict):
            row["error"] = {k: err.get(k) for k in ("code", "type", "message")}
    elif opened:
        row["status"] = "parked"
        row["waiting"] = "event" if "event" in opened.values() else "timer"
    else:
        row["status"], row["waiting"] = "running", None
    return row


def foldable(commit: Commit) -> Commit:
    """What `fold` reads of `commit`, and nothing else (no state, results or payloads):
    `fold(row, foldable(c)) == fold(row, c)`. Kept for commits waiting to be folded."""
    part: Commit = {k: commit[k] for k in ("actor", "seq", "ts", "run", "kind", "error")
                    if k in commit}
    message = commit.get("message")
    if isinstance(message, dict):
        part["message"] = {"handler": message.get("handler"), "name": message.get("name")}
    events = commit.get("events")
    if events:
        part["events"] = [{"op": e.get("op", ""), "step": e.get("step"),
                           "name": e.get("name", "")} for e in events]
    return part


def added_activities(before: Run | None, after: Run) -> list[str]:
    known = set(before["activities"]) if before else set()
    return [a for a in after["activities"] if a not in known]


def shown(row: Run) -> Run:
    """The row as the query returns it: without the open waits, with its cursor."""
    out = {k: row.get(k) for k in SHOWN}
    out["cursor"] = cursor(row)
    return out


def cursor(row: Run) -> str:
    raw = json.dumps([row["started"], row["actor"], row["msg"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(after: str) -> tuple[float, str, str]:
    try:
        raw = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4))
        started, actor, msg = json.loads(raw)
        return float(started), str(actor), str(msg)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"after: not a cursor returned by a run listing ({after!r})") from exc


def check(status: str | None, limit: int, after: str | None) -> tuple[float, str, str] | None:
    """Refuse filters no store could answer (ValueError naming the filter); returns the
    decoded cursor."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: {limit} is not between 1 and {MAX_LIMIT}")
    return decode_cursor(after) if after else None


def matches(row: Run, *, type: str | None, status: str | None, activity: str | None,
            id_prefix: str | None, started_after: float | None,
            started_before: float | None, ended_after: float | None,
            ended_before: float | None, key: tuple[float, str, str] | None) -> bool:
    """The filters, for a store that keeps its rows in memory (the SQL stores say the same
    in their query)."""
    ended = row["ended"]
    return ((type is None or row["type"] == type)
            and (status is None or row["status"] == status)
            and (activity is None or activity in row["activities"])
            and (id_prefix is None or row["actor"].partition("/")[2].startswith(id_prefix))
            and (started_after is None or row["started"] >= started_after)
            and (started_before is None or row["started"] < started_before)
            and (ended_after is None or (ended is not None and ended >= ended_after))
            and (ended_before is None or (ended is not None and ended < ended_before))
            and (key is None or (row["started"], row["actor"], row["msg"]) < key))


def order(row: Run) -> tuple[float, str, str]:
    """Newest first: sort by this, descending (the keyset is the same triple)."""
    return (row["started"], row["actor"], row["msg"])
