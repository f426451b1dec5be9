"""`loom serve`, `loom keys create|list|revoke`, `loom schedule add|list|remove`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from runtime import errors

Leaf = Callable[[Any, str, str], argparse.ArgumentParser]


def _store() -> Any:
    from runtime.service.config import ServiceConfig
    from runtime.service.store import open_store
    from runtime.settings import load_settings

    return open_store(load_settings(), ServiceConfig())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from runtime.service import Service, create_app, tracing
    from runtime.service.logs import use_json_logs

    if args.json_logs:
        use_json_logs()
    tracing.install_from_environment()
    app = create_app(Service(modules=args.module or []))
    print(f"loom serve: API on http://{args.host}:{args.port}/v1 (OpenAPI /docs), Studio "
          f"/studio/, metrics /metrics", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level or "warning",
                access_log=False,
                log_config=None if args.json_logs else uvicorn.config.LOGGING_CONFIG)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from runtime.service.keys import KeyError_, create_key

    store = _store()
    try:
        if args.command == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            try:
                key, record = create_key(store, args.tenant, scopes, args.label or "")
            except KeyError_ as exc:
                raise errors.InputInvalid(str(exc)) from None
            print(key)
            print(f"key {record.id} for tenant {record.tenant}, scopes "
                  f"{','.join(sorted(record.scopes))}: shown once, stored hashed",
                  file=sys.stderr)
            return 0
        if args.command == "list":
            keys = store.keys(args.tenant)
            print(f"{'ID':<14} {'TENANT':<20} {'SCOPES':<24} {'CREATED':<20} STATUS")
            for k in keys:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created_at))
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id:<14} {k.tenant:<20} {','.join(sorted(k.scopes)):<24} "
                      f"{created:<20} {state}{'  ' + k.label if k.label else ''}")
            return 0
        if not store.revoke_key(args.key_id):
            raise errors.NotFound(f"no active key {args.key_id} (`loom keys list`)")
        print(f"key {args.key_id} revoked (servers stop accepting it within 2 s)")
        return 0
    finally:
        store.close()


def cmd_schedule(args: argparse.Namespace) -> int:
    from runtime.service.cron import Cron, CronInvalid
    from runtime.service.keys import TENANT_PATTERN
    from runtime.service.store import Schedule

    store = _store()
    try:
        if args.command == "add":
            if not TENANT_PATTERN.match(args.tenant):
                raise errors.InputInvalid(f"tenant {args.tenant!r} must match "
                                          f"{TENANT_PATTERN.pattern}")
            try:
                Cron(args.cron)
            except CronInvalid as exc:
                raise errors.InputInvalid(f"--cron: {exc}") from None
            if "/" not in args.target:
                raise errors.InputInvalid("target must be an actor address type/id")
            try:
                payload = json.loads(args.payload)
            except ValueError as exc:
                raise errors.InputInvalid(f"--payload is not JSON: {exc}") from None
            now = time.time()
            s = Schedule(args.tenant, args.name, args.cron, args.target, args.handler, payload,
                         args.missed, now, now)
            if not store.add_schedule(s):
                raise errors.InputInvalid(f"schedule {args.name} exists for tenant "
                                          f"{args.tenant}; remove it first")
            print(f"schedule {args.name} ({args.cron}, missed ticks: {args.missed}) -> "
                  f"{args.target} {args.handler}; a running `loom serve` fires it")
            return 0
        if args.command == "list":
            for s in store.schedules(args.tenant):
                last = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.cursor))
                print(f"{s.tenant:<12} {s.name:<20} {s.cron:<18} {s.missed:<9} "
                      f"{s.target} {s.handler}  fired {s.fired}, last tick {last} UTC")
            return 0
        if not store.remove_schedule(args.tenant, args.name):
            raise errors.NotFound(f"no schedule {args.name} for tenant {args.tenant}")
        print(f"schedule {args.name} removed")
        return 0
    finally:
        store.close()


def cmd_actor_list(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.cli import _open_existing_journal
    from runtime.service.visibility import FilterInvalid, list_runs, table
    from runtime.settings import load_settings

    async def listed() -> list[dict[str, Any]]:
        journal = _open_existing_journal(load_settings())
        if journal is None:
            return []
        try:
            return await list_runs(
                journal, type=args.type, status=args.status, activity=args.activity,
                id_prefix=f"{args.tenant}~" if args.tenant else None, since=args.since,
                until=args.until, ended_since=args.ended_since, ended_until=args.ended_until,
                limit=args.limit, after=args.after)
        finally:
            await journal.close()

    try:
        rows = asyncio.run(listed())
    except FilterInvalid as exc:
        name, _, why = str(exc).partition(":")
        raise errors.InputInvalid(f"--{name.replace('_', '-')}:{why}") from None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(table(rows))
    if len(rows) == args.limit:
        print(f"(more: --after {rows[-1]['cursor']})", file=sys.stderr)
    return 0


def register_actor_list(actors: Any, leaf: Leaf) -> None:
    """`loom actor list`: runs from the journal's run index, newest first."""
    from runtime.journal.runs import STATUSES

    al = leaf(actors, "list", "list runs of actors (newest first), filtered; reads the run "
                              "index, not the journals")
    al.add_argument("--type", help="actor type")
    al.add_argument("--status", help=f"one of {', '.join(STATUSES)}")
    al.add_argument("--activity", help="runs that called this activity")
    al.add_argument("--tenant", help="actors of one tenant of `loom serve`")
    al.add_argument("--since", help="started at or after: epoch s, ISO 8601 or an age (2h)")
    al.add_argument("--until", help="started before (same forms)")
    al.add_argument("--ended-since", help="ended at or after (same forms)")
    al.add_argument("--ended-until", help="ended before (same forms)")
    al.add_argument("--limit", type=int, default=50, help="rows per page (1-1000)")
    al.add_argument("--after", help="the cursor printed after a full page")
    al.add_argument("--json", action="store_true", help="JSON rows (with their cursors)")
    al.set_defaults(func=None, direct=cmd_actor_list)


def register(sub: Any, leaf: Leaf) -> None:
    sv = leaf(sub, "serve", "the HTTP API, the Studio and /metrics (uvicorn)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--module", action="append", help="actors to run in the server "
                    "(module or .py file; repeatable)")
    sv.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    sv.set_defaults(func=None, direct=cmd_serve, verbose_default=True)

    keys = sub.add_parser("keys", help="API keys of tenants (hashed, scoped)")
    ks = keys.add_subparsers(dest="command", required=True)
    kc = leaf(ks, "create", "make a key (printed once)")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--scopes", default="read,invoke",
                    help="comma-separated: read, invoke, write, admin (default read,invoke)")
    kc.add_argument("--label", help="what the key is for")
    kc.set_defaults(func=None, direct=cmd_keys)
    kl = leaf(ks, "list", "keys (never their secrets)")
    kl.add_argument("--tenant")
    kl.set_defaults(func=None, direct=cmd_keys)
    kr = leaf(ks, "revoke", "stop accepting a key")
    kr.add_argument("key_id")
    kr.set_defaults(func=None, direct=cmd_keys)

    sch = sub.add_parser("schedule", help="cron schedules fired by `loom serve`")
    ss = sch.add_subparsers(dest="command", required=True)
    sa = leaf(ss, "add", "send a message to an actor on every tick")
    sa.add_argument("name")
    sa.add_argument("--tenant", required=True)
    sa.add_argument("--cron", required=True, help="'m h dom mon dow' (UTC) or '@every 30s'")
    sa.add_argument("--target", required=True, help="actor address type/id")
    sa.add_argument("--handler", required=True)
    sa.add_argument("--payload", default="null", help="JSON (a dict also gets scheduled_at)")
    sa.add_argument("--missed", choices=["catch-up", "skip"], default="skip",
                    help="after downtime: fire every missed tick, or only the latest")
    sa.set_defaults(func=None, direct=cmd_schedule)
    sl = leaf(ss, "list", "schedules, their last tick and how often they fired")
    sl.add_argument("--tenant")
    sl.set_defaults(func=None, direct=cmd_schedule)
    sr = leaf(ss, "remove", "delete a schedule")
    sr.add_argument("name")
    sr.add_argument("--tenant", required=True)
    sr.set_defaults(func=None, direct=cmd_schedule)
