"""Listing runs: the one query behind `loom actor list`, `GET /v1/runs` and the Studio's Runs
page. It reads the journal's run index (`JournalStore.runs`), never the journals.

Times are given as epoch seconds, ISO 8601 (`2026-11-30T08:00:00Z`; no zone means UTC) or
an age (`90s`, `15m`, `2h`, `7d`: that long before now)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from runtime.journal import runs as run_index
from runtime.journal.store import JournalStore

STATUSES = run_index.STATUSES
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class FilterInvalid(ValueError):
    """A filter no store could answer; the message starts with the filter's name."""


def parse_time(name: str, text: str | None, now: float | None = None) -> float | None:
    if text is None or text == "":
        return None
    text = text.strip()
    age = _AGE.match(text)
    if age:
        return (time.time() if now is None else now) - float(age[1]) * _UNIT[age[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterInvalid(f"{name}: {text!r} is not a time (epoch seconds, ISO 8601 such "
                            "as 2026-11-30T08:00:00Z, or an age such as 15m, 2h, 7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def list_runs(journal: JournalStore, *, type: str | None = None,
                    status: str | None = None, activity: str | None = None,
                    id_prefix: str | None = None, since: str | None = None,
                    until: str | None = None, ended_since: str | None = None,
                    ended_until: str | None = None, limit: int = 50,
                    after: str | None = None) -> list[dict[str, Any]]:
    """Runs newest first, filtered; each row carries the `cursor` for the next page.
    Raises FilterInvalid naming the filter."""
    if status is not None and status not in STATUSES:
        raise FilterInvalid(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if type is not None and (not type or "/" in type):
        raise FilterInvalid(f"type: {type!r} is not an actor type")
    window = {"started_after": parse_time("since", since),
              "started_before": parse_time("until", until),
              "ended_after": parse_time("ended_since", ended_since),
              "ended_before": parse_time("ended_until", ended_until)}
    try:
        return await journal.runs(type=type, status=status, activity=activity,
                                  id_prefix=id_prefix, limit=limit, after=after, **window)
    except ValueError as exc:
        raise FilterInvalid(str(exc)) from None


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as the CLI prints them."""
    head = (f"{'ACTOR':<28} {'HANDLER':<14} {'STATUS':<16} {'STARTED (UTC)':<19} "
            f"{'ENDED (UTC)':<19} {'SEQ':>9}  ACTIVITIES / ERROR")
    lines = [head]
    for r in rows:
        status = r["status"] + (f" ({r['waiting']})" if r.get("waiting") else "")
        seqs = f"{r['first_seq']}-{r['last_seq']}"
        tail = ",".join(r.get("activities") or [])
        if r.get("error"):
            tail = f"{tail}  {r['error'].get('code')}: {r['error'].get('message')}".strip()
        lines.append(f"{r['actor']:<28} {r.get('handler') or '-'!s:<14} {status:<16} "
                     f"{when(r['started']):<19} {when(r.get('ended')):<19} {seqs:>9}  "
                     f"{tail[:80]}")
    return "\n".join(lines)
