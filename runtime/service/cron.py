"""Cron schedules: each tick becomes one durable message, once, however many servers run.

Every server looks for due ticks each `LOOM_SERVICE_CRON_INTERVAL_S`. A tick's message id is
`cron:<schedule>:<tick ms>`, and the journal enqueues create-if-absent, so two servers
firing the same tick deliver it once; then the schedule's cursor (last tick fired) moves by
compare-and-set in the store (shared by servers on several hosts with the Redis store), so
the next pass starts after it. Enqueue first, cursor second: a server that dies in between
loses no tick (the next pass fires it again, deduplicated). That needs the servers to share
one journal, as servers of one deployment do (they serve the same actors); servers on
separate journals would each deliver a tick. Missed ticks (no server was running):
`catch-up` fires each of them (at most `max_catch_up` per pass), `skip` only the latest.

Expressions: five fields `minute hour day-of-month month day-of-week` (`*`, `a-b`, `*/n`,
`a,b`, day-of-week 0-6 from Sunday, UTC), or `@every <n>s|m|h` (ticks at multiples of n
since the epoch, so every server agrees on them)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from runtime.service import tenancy
from runtime.service.store import Schedule

if TYPE_CHECKING:
    from runtime.service.service import Service

log = logging.getLogger("loom.cron")
IDLE_ADVANCE_S = 3600.0  # a schedule's cursor moves on without a tick once it is this old
MISSED = ("catch-up", "skip")
_EVERY = re.compile(r"^@every\s+(\d+)(s|m|h)$")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


class CronInvalid(ValueError):
    pass


def _field(text: str, lo: int, hi: int, what: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise CronInvalid(f"{what}: bad step in {part!r}")
        if base == "*":
            start, end = lo, hi
        elif re.fullmatch(r"\d+-\d+", base):
            start, end = (int(x) for x in base.split("-"))
        elif base.isdigit():
            start = end = int(base)
            if step:
                end = hi
        else:
            raise CronInvalid(f"{what}: cannot read {part!r}")
        if not lo <= start <= end <= hi:
            raise CronInvalid(f"{what}: {part!r} is outside {lo}-{hi}")
        values.update(range(start, end + 1, step or 1))
    return frozenset(values)


class Cron:
    SCAN_MINUTES = 600_000  # minutes `ticks` looks through at most (~14 months)

    def __init__(self, expr: str) -> None:
        self.expr = expr.strip()
        m = _EVERY.match(self.expr)
        self.every: float | None = None
        if m:
            self.every = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
            if self.every <= 0:
                raise CronInvalid("@every needs a positive interval")
            return
        parts = self.expr.split()
        if len(parts) != 5:
            raise CronInvalid(f"{expr!r}: expected 5 fields (minute hour day month weekday) "
                              "or '@every <n>s|m|h'")
        names = ("minute", "hour", "day-of-month", "month", "day-of-week")
        self.fields = [_field(p, lo, hi, n) for p, (lo, hi), n in zip(parts, _RANGES, names,
                                                                       strict=True)]

    def matches(self, t: dt.datetime) -> bool:
        mi, ho, dom, mo, dow = self.fields
        return (t.minute in mi and t.hour in ho and t.day in dom and t.month in mo
                and (t.weekday() + 1) % 7 in dow)

    def ticks(self, after: float, until: float, limit: int) -> list[float]:
        """Tick times t with after < t <= until, oldest first, at most `limit`."""
        out: list[float] = []
        if self.every is not None:
            n = int(after // self.every) + 1
            while n * self.every <= until and len(out) < limit:
                out.append(n * self.every)
                n += 1
            return out
        t = dt.datetime.fromtimestamp(after - after % 60 + 60, dt.UTC)
        end = dt.datetime.fromtimestamp(until, dt.UTC)
        scanned = 0
        while t <= end and len(out) < limit and scanned < self.SCAN_MINUTES:
            if self.matches(t):
                out.append(t.timestamp())
            t += dt.timedelta(minutes=1)
            scanned += 1
        return out


def tick_message(s: Schedule, tick: float) -> dict[str, Any]:
    payload = s.payload
    if isinstance(payload, dict) and "scheduled_at" not in payload:
        payload = {**payload, "scheduled_at": tick}
    elif payload is None:
        payload = {"scheduled_at": tick}
    type_, _, id_ = s.target.partition("/")
    return {"id": f"cron:{s.name}:{round(tick * 1000)}", "target": tenancy.actor(s.tenant, type_,
            id_), "kind": "call", "handler": s.handler, "payload": payload,
            "deliver_at": tick, "scheduled_at": tick}


class Scheduler:
    def __init__(self, service: Service, clock: Any = time.time) -> None:
        self.service = service
        self.clock = clock

    async def loop(self) -> None:
        while True:
            try:
                await self.fire_due()
            except Exception:  # one bad pass never stops the schedules
                log.exception("cron pass failed")
            await asyncio.sleep(self.service.config.cron_interval_s)

    async def fire_due(self) -> int:
        svc = self.service
        fired = 0
        now = self.clock()
        for s in await asyncio.to_thread(svc.store.schedules):
            try:
                fired += await self._fire(s, now)
            except Exception as exc:  # one schedule's failure must not stop the others'
                log.warning("cron schedule %s of %s failed: %s", s.name, s.tenant, exc)
        return fired

    async def _fire(self, s: Schedule, now: float) -> int:
        svc = self.service
        fired = 0
        ticks = Cron(s.cron).ticks(s.cursor, now, svc.config.max_catch_up
                                   if s.missed == "catch-up" else 1_000_000)
        if not ticks:
            if now - s.cursor > IDLE_ADVANCE_S:  # scanned up to now, or the scan's limit:
                # move past it, so a schedule that seldom or never matches (30 February)
                # is not scanned from the same old cursor minute by minute on every pass
                seen = min(now, s.cursor - s.cursor % 60 + 60 * Cron.SCAN_MINUTES)
                await asyncio.to_thread(svc.store.advance, s.tenant, s.name, s.cursor,
                                        seen - seen % 60, 0)
            return 0
        if s.missed == "skip":
            ticks = ticks[-1:]
        for tick in ticks:
            if await svc.journal.enqueue(tick_message(s, tick)):
                fired += 1
                svc.metrics.cron_ticks.inc()
        await asyncio.to_thread(svc.store.advance, s.tenant, s.name, s.cursor, ticks[-1],
                                len(ticks))
        if svc.runtime is not None:
            svc.runtime.notify(tick_message(s, ticks[-1])["target"])
        return fired
