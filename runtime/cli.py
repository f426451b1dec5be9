"""The `loom` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import cli_build, cli_service, errors
from runtime.executor import Executor, InvocationResult
from runtime.settings import LoomSettings, load_settings
from schemas.json_text import JsonTextError, parse_json_text

if TYPE_CHECKING:
    from runtime.journal.store import JournalStore

PROGRESS_THRESHOLD = 1024 * 1024
OUTCOMES = ("completed", "failed", "rejected", "cancelled", "dead_lettered")
"""The `kind` of a commit that ends a message's run."""
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
SDK_LOGGERS = ("azure", "urllib3", "redis")
"""Third-party loggers kept at WARNING unless --sdk-log asks for them (the Azure SDK logs
every HTTP request and response header at INFO)."""


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, version or None


def _read_json_arg(text: str | None, path: str | None, what: str) -> Any:
    data: bytes | str | None = text
    name = what
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise errors.InputInvalid(f"cannot read {what} file {path}: "
                                      f"{exc.strerror or exc}") from None
        name = f"{what} file {path}"
    if data is None:
        return {}
    try:
        return parse_json_text(data, name)
    except JsonTextError as exc:
        raise errors.InputInvalid(str(exc)) from None


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise errors.NotFound(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _home(settings: LoomSettings) -> str:
    return f"LOOM_HOME={settings.home.resolve()}"


def _journal_where(settings: LoomSettings) -> str:
    url = settings.resolved_journal_url
    if url.startswith("sqlite:///"):
        url = f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"
    return f"journal {url} ({_home(settings)}; set LOOM_HOME or LOOM_JOURNAL_URL to look " \
           "elsewhere)"


def _registry_where(settings: LoomSettings) -> str:
    url = settings.resolved_blob_url
    if url.startswith("file://"):
        url = f"file://{Path(url[len('file://'):]).resolve()}"
    return f"registry {url} ({_home(settings)})"


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r  uploading [{'#' * filled}{'.' * (width - filled)}] "
                     f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _load_manifest(path: str) -> Any:
    try:
        return parse_json_text(_read_file(path, "manifest"), f"manifest {path}")
    except JsonTextError as exc:
        raise errors.ManifestInvalid(str(exc)) from None


def _upload_pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(wasm, manifest) pairs: one file, or every <name>.wasm of a folder with its
    <name>.manifest.json."""
    target = Path(args.wasm)
    if target.is_dir():
        if args.manifest:
            raise errors.InputInvalid("--manifest goes with one .wasm file, not a folder")
        wasms = sorted(target.glob("*.wasm"))
        if not wasms:
            raise errors.NotFound(f"no .wasm files in {target}")
        pairs = [(w, w.with_name(f"{w.stem}.manifest.json")) for w in wasms]
    else:
        manifest = Path(args.manifest) if args.manifest else \
            target.with_name(f"{target.stem}.manifest.json")
        pairs = [(target, manifest)]
    for wasm, manifest in pairs:
        if not args.manifest and not manifest.exists():
            raise errors.NotFound(f"no manifest for {wasm}: give --manifest, or put "
                                  f"{manifest.name} next to it")
    return pairs


def cmd_upload(ex: Executor, args: argparse.Namespace) -> int:
    pairs = _upload_pairs(args)
    for wasm_path, manifest_path in pairs:
        wasm = _read_file(str(wasm_path), "wasm file")
        raw = _load_manifest(str(manifest_path))
        if isinstance(raw, dict) and "--" in str(raw.get("name", "")):  # tenancy.ACTIVITY_SEP
            raise errors.ManifestInvalid(
                f"{manifest_path}: name {raw['name']!r}: '--' is reserved (the service stores "
                "a tenant's own activities as <tenant>--<name>)")
        progress = _progress if len(wasm) >= PROGRESS_THRESHOLD else None
        result = ex.upload(wasm, raw, progress=progress, on_stage=None if progress is None
                           else lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        m = result.manifest
        state = "uploaded" if result.created else "already present (identical), nothing changed"
        print(f"{m.ref} {state}: {len(wasm):,} bytes, sha256 {m.sha256[:16]}…, "
              f"abi {m.abi.value}")
        if isinstance(raw, dict) and "sha256" not in raw:
            print(f"  note: {manifest_path} has no sha256; it was computed from the wasm: "
                  f"{m.sha256}")
    if len(pairs) > 1 or result.created:
        print(f"  into {_registry_where(ex.settings)}")
    return 0


def cmd_list(ex: Executor, args: argparse.Namespace) -> int:
    names = ex.registry.names()
    if not names:
        print(f"no activities in {_registry_where(ex.settings)}")
        return 0
    print(f"{'NAME':<24} {'LATEST':<12} {'ABI':<13} VERSIONS")
    for name in names:
        versions = ex.registry.versions(name)
        yanked = ex.registry.yanked(name)
        try:
            latest = ex.registry.get(name)
            head = f"{latest.version:<12} {latest.abi.value:<13}"
        except errors.NotFound:
            head = f"{'(all yanked)':<12} {'-':<13}"
        shown = [f"{v} (yanked)" if v in yanked else v for v in versions]
        print(f"{name:<24} {head} {', '.join(shown)}")
    return 0


def cmd_yank(ex: Executor, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    if version is None:
        raise errors.InputInvalid(f"yank needs an exact version: {name}@<version>")
    if args.undo:
        ex.registry.unyank(name, version)
        print(f"{name}@{version} is no longer yanked")
        return 0
    ex.registry.yank(name, version, reason=args.reason or "")
    try:
        latest = ex.registry.get(name).version
        now = f"latest is now {latest}"
    except errors.NotFound:
        now = "no version is left as latest"
    print(f"{name}@{version} yanked: callers that pin it still get it; {now}")
    return 0


def cmd_show(ex: Executor, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    print(ex.registry.get(name, version).model_dump_json(indent=2))
    return 0


def _print_result(result: InvocationResult, *, verbose: bool) -> None:
    print(json.dumps(result.output, indent=2, ensure_ascii=False))
    if verbose:
        fuel = f", fuel {result.fuel_used:,}" if result.fuel_used is not None else ""
        print(f"-- {result.activity}@{result.version} in {result.duration_ms:.2f} ms, memory "
              f"{result.memory_bytes / 1024:.0f} KiB{fuel}, key {result.idempotency_key}",
              file=sys.stderr)
        for entry in result.logs:
            print(f"   log {entry['level']}: {entry['message']}", file=sys.stderr)


def cmd_invoke(ex: Executor, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    data = _read_json_arg(args.input, args.input_file, "input")
    result = ex.execute(name, data, version=version, idempotency_key=args.idempotency_key,
                        tenant=args.tenant, timeout_ms=args.timeout_ms)
    _print_result(result, verbose=args.verbose)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run one .wasm + manifest in a throwaway registry and report limits and resource use.

    The registry (blobs) is a temporary folder; compiled modules are cached under
    LOOM_HOME like every other command's, so nothing is written to the current folder.
    """
    wasm = _read_file(args.wasm, "wasm file")
    manifest = _load_manifest(args.manifest)
    data = _read_json_arg(args.input, args.input_file, "input")
    with tempfile.TemporaryDirectory(prefix="loom-sandbox-") as blobs, \
            Executor(load_settings(blob_url=f"file://{blobs}")) as ex:
        m = ex.upload(wasm, manifest).manifest
        lim = m.limits
        print(f"sandbox {m.ref} ({m.abi.value}): memory {lim.memory_bytes // 1024} KiB, "
              f"timeout {lim.timeout_ms} ms, fuel {lim.fuel or 'off'}, stack "
              f"{lim.stack_bytes // 1024} KiB, input<= {lim.max_input_bytes:,} B, "
              f"output<= {lim.max_output_bytes:,} B", file=sys.stderr)
        caps = m.capabilities.model_dump(exclude_defaults=True)
        print(f"capabilities: {json.dumps(caps) if caps else 'none'}", file=sys.stderr)
        _print_result(ex.execute(m.name, data, version=m.version, timeout_ms=args.timeout_ms),
                      verbose=True)
    return 0


# -- actors ------------------------------------------------------------------------------------

def _actor_key(args: argparse.Namespace) -> str:
    return f"{args.type}/{args.id}"


def _describe_event(e: dict[str, Any]) -> str:
    extra = ""
    if "attempts" in e:
        extra += f" attempts={e['attempts']}"
    if "error" in e:
        extra += f" error={e['error'].get('code')}: {e['error'].get('message')}"
    if "result" in e:
        extra += f" -> {json.dumps(e['result'])[:80]}"
    if "payload" in e:
        extra += f" payload={json.dumps(e['payload'])[:80]}"
    if e.get("fire_at"):
        extra += f" fire_at={e['fire_at']:.3f}"
    for used in e.get("resources") or ():  # one per attempt
        extra += "\n          " + _describe_resources(used)
    return f"step {e['step']}: {e['op']} {e['name']}{extra}"


def _describe_resources(used: dict[str, Any]) -> str:
    parts = [f"{used.get('duration_ms', 0):.2f} ms"]
    if used.get("fuel") is not None:
        parts.append(f"fuel {used['fuel']}")
    if used.get("memory_bytes"):
        parts.append(f"memory {used['memory_bytes'] / 1024:.0f} KiB")
    if "warm" in used:
        parts.append("warm instance" if used["warm"] else "new instance")
    if used.get("ok") is False:
        parts.append(f"failed: {used.get('code')}")
    return "used: " + ", ".join(parts)


def _open_existing_journal(settings: LoomSettings) -> JournalStore | None:
    """The journal, or None when the embedded SQLite file does not exist (reading must not
    create an empty journal wherever the command happens to run)."""
    from runtime.journal import open_journal

    url = settings.resolved_journal_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return None
    return open_journal(settings)


async def _read_commits(args: argparse.Namespace, *, tail: bool = False
                        ) -> tuple[LoomSettings, list[dict[str, Any]]]:
    settings = load_settings()
    journal = _open_existing_journal(settings)
    if journal is None:
        return settings, []
    try:
        read = journal.read_tail if tail else journal.read
        return settings, await read(_actor_key(args))
    finally:
        await journal.close()


def _nothing(what: str, settings: LoomSettings) -> int:
    print(f"{what}; looked in {_journal_where(settings)}", file=sys.stderr)
    return 1


def cmd_actor_journal(args: argparse.Namespace) -> int:
    import asyncio

    settings, commits = asyncio.run(_read_commits(args))
    if not commits:
        return _nothing(f"no journal for {_actor_key(args)}", settings)
    for c in commits:
        kind = c.get("kind", "step")
        run = c.get("run") or {}
        head = f"#{c['seq']:<4} {kind:<9} run={run.get('msg', '-')}"
        if "message" in c:
            head += f" handler={c['message'].get('handler')}"
        print(head)
        for e in c.get("events", []):
            print(f"        {_describe_event(e)}")
        for m in c.get("outbox", []):
            print(f"        outbox -> {m['target']} {m.get('handler') or m.get('name')}")
        if "error" in c:
            print(f"        error: {_error_text(c['error'])}")
        if "state" in c:
            print(f"        state: {json.dumps(c['state'])[:200]}")
        if "delta" in c:
            print(f"        delta: {json.dumps(c['delta'])[:200]}")
    return 0


def _error_text(err: dict[str, Any]) -> str:
    """`Type: message`, without doubling a type the message already starts with."""
    kind, message = str(err.get("type")), str(err.get("message"))
    return message if message.startswith(f"{kind}: ") else f"{kind}: {message}"


def _outcome(commit: dict[str, Any], handlers: dict[str, str]) -> dict[str, Any]:
    msg = (commit.get("run") or {}).get("msg")
    out: dict[str, Any] = {"seq": commit["seq"], "msg": msg, "handler": handlers.get(msg or ""),
                           "outcome": commit.get("kind")}
    if "error" in commit:
        out["error"] = {k: commit["error"].get(k) for k in ("type", "code", "message")}
    else:
        out["result"] = commit.get("result")
    return out


def _handlers(commits: list[dict[str, Any]]) -> dict[str, str]:
    """message id -> handler (or event) name, from the commits that announce a run."""
    found = {}
    for c in commits:
        message = c.get("message")
        if isinstance(message, dict) and message.get("id"):
            found[message["id"]] = message.get("handler") or message.get("name") or "?"
    return found


def cmd_actor_show(args: argparse.Namespace) -> int:
    import asyncio

    async def show() -> int:
        settings = load_settings()
        journal = _open_existing_journal(settings)
        if journal is None:
            return _nothing(f"{_actor_key(args)} has no journal", settings)
        try:
            tail = await journal.read_tail(_actor_key(args))
            recent = [] if not tail else await journal.read(
                _actor_key(args), after_seq=max(-1, tail[-1]["seq"] - 200))
            waiting = await journal.inbox(_actor_key(args), float("inf"), calls=0)
        finally:
            await journal.close()
        if not tail:
            return _nothing(f"{_actor_key(args)} has no journal", settings)
        from runtime.actors.delta import after_last_state, current_state

        state = current_state(tail)
        names = _handlers(recent)
        outcomes = [_outcome(c, names) for c in recent if c.get("kind") in OUTCOMES]
        # events no wait has taken: sent before the run that could wait for them, or not
        # yet waited for; they are never handed to a later run
        events = [{"id": e["id"], "name": e.get("name"), "n": e.get("n"),
                   "payload": e.get("payload")} for e in waiting if e.get("kind") == "event"]
        print(json.dumps({"actor": _actor_key(args), "seq": tail[-1]["seq"],
                          "state": state,
                          "run_in_progress": any(c.get("run") for c in after_last_state(tail)),
                          "recent": outcomes[-args.last:] if args.last > 0 else [],
                          "undelivered_events": events},
                         indent=2))
        return 0

    return asyncio.run(show())


def cmd_actor_replay(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.actors.loading import actor_classes, load_module
    from runtime.actors.replay import replay_commits
    from runtime.journal import open_journal

    classes = {c.type_name: c for c in actor_classes(load_module(args.module))}
    if args.type not in classes:
        raise errors.NotFound(f"{args.module} defines no actor type {args.type!r} "
                              f"(it has: {', '.join(classes) or 'none'})")

    async def replay() -> int:
        journal = open_journal(load_settings())
        commits = await journal.read(_actor_key(args))
        await journal.close()
        report = await replay_commits(classes[args.type], _actor_key(args), commits)
        for r in report.runs:
            print(f"#{r.start_seq:<4} {r.handler:<16} {r.status:<10} {r.detail}")
        print(f"{len(report.runs)} runs replayed: "
              f"{'no divergence' if report.ok else 'DIVERGENCE FOUND'}")
        return 0 if report.ok else 1

    return asyncio.run(replay())


def _envelope(args: argparse.Namespace, payload: Any, msg_id: str) -> dict[str, Any]:
    env: dict[str, Any] = {"id": msg_id, "target": _actor_key(args), "payload": payload,
                           "deliver_at": 0.0}
    if args.event:
        env.update(kind="event", name=args.name)
    else:
        env.update(kind="call", handler=args.name)
    return env


def cmd_actor_send(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from runtime.journal import open_journal

    payload = _read_json_arg(args.payload, None, "payload")

    async def send() -> int:
        journal = open_journal(load_settings())
        msg_id = args.msg_id or str(uuid.uuid4())
        try:
            created = await journal.enqueue(_envelope(args, payload, msg_id))
        finally:
            await journal.close()
        print(f"{'queued' if created else 'already queued (same id)'} {msg_id}")
        return 0

    return asyncio.run(send())


def cmd_cluster_status(args: argparse.Namespace) -> int:
    """Workers, partition owners and epochs, due actors per partition, runs per code version
    (and those no live worker can resume), dead letters, limits in use, open breakers."""
    import asyncio

    from runtime.cluster.status import JournalView, fleet_status, read_journal_view
    from runtime.limits import limiter_from_settings

    settings = load_settings()
    if not settings.redis_url:
        print("error: LOOM_REDIS_URL is not set: workers run one process each, no fleet",
              file=sys.stderr)
        return 2

    async def view() -> JournalView | None:
        journal = _open_existing_journal(settings)
        if journal is None:
            return None
        try:
            return await read_journal_view(journal)
        finally:
            await journal.close()

    limiter = (limiter_from_settings(settings.limits, settings.redis_url)
               if settings.limits else None)
    try:
        status = fleet_status(settings.redis_url, int(settings.lease_ttl_s * 1000),
                              asyncio.run(view()) or JournalView(), limits=limiter,
                              breaker_url=settings.breaker_url if settings.breaker_url
                              .startswith(("redis://", "rediss://")) else None)
    except redis_errors() as exc:
        print(f"error: Redis at {settings.redis_url} unreachable: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2))
    return 0


def redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError,)


def cmd_dlq(args: argparse.Namespace) -> int:
    """`loom dlq list|show|retry|drop`: messages whose activation kept ending before their
    run finished (a poison message, a worker killed each time)."""
    import asyncio
    import uuid

    async def dlq() -> int:
        settings = load_settings()
        journal = _open_existing_journal(settings)
        if journal is None:
            return _nothing("no dead letters", settings)
        try:
            entries = await journal.dead_letters(10_000)
            if args.command == "list":
                for e in entries:
                    print(f"{e['actor']:<30} {e['msg']:<38} x{e.get('deliveries')}  "
                          f"{(e.get('error') or {}).get('last', '')}")
                if not entries:
                    return _nothing("no dead letters", settings)
                return 0
            found = next((e for e in entries
                          if e["actor"] == f"{args.type}/{args.id}" and e["msg"] == args.msg_id),
                         None)
            if found is None:
                return _nothing(f"no dead letter {args.msg_id} for {args.type}/{args.id}",
                                settings)
            if args.command == "show":
                print(json.dumps(found, indent=2))
                return 0
            if args.command == "retry":  # a new message: the dead one's id stays consumed
                env = dict(found["envelope"])
                env.pop("n", None)
                env["id"] = f"{found['msg']}~retry-{uuid.uuid4().hex[:8]}"
                await journal.enqueue(env)
                print(f"re-sent as {env['id']}")
            await journal.drop_dead_letter(found["actor"], found["msg"])
            if args.command == "drop":
                print(f"dropped {found['msg']} of {found['actor']}")
            return 0
        finally:
            await journal.close()

    return asyncio.run(dlq())


def cmd_actor_cancel(args: argparse.Namespace) -> int:
    """Cancel the actor's current run, on whichever worker holds it (or when it wakes)."""
    import asyncio
    import uuid

    from runtime.journal import open_journal

    async def cancel() -> int:
        journal = open_journal(load_settings())
        msg_id = f"cancel:{uuid.uuid4()}"
        env = {"id": msg_id, "target": _actor_key(args), "kind": "cancel",
               "payload": {"reason": args.reason}, "deliver_at": 0.0}
        try:
            await journal.enqueue(env)
        finally:
            await journal.close()
        print(f"cancel queued for {_actor_key(args)} ({msg_id}): its run stops at its next "
              "step and compensates; `loom actor show` reports it cancelled")
        return 0

    return asyncio.run(cancel())


def cmd_actor_ask(args: argparse.Namespace) -> int:
    """Queue a call and wait until its outcome is durable in the journal; print it."""
    import asyncio
    import uuid

    from runtime.journal import open_journal

    payload = _read_json_arg(args.payload, None, "payload")
    args.event = False
    settings = load_settings()

    async def ask() -> int:
        journal = open_journal(settings)
        key = _actor_key(args)
        msg_id = args.msg_id or str(uuid.uuid4())
        try:
            tail = await journal.read_tail(key)
            after = tail[-1]["seq"] if tail else -1
            if not await journal.enqueue(_envelope(args, payload, msg_id)):
                after = -1  # the id was queued before: its outcome may be in the journal
            deadline = time.monotonic() + args.timeout
            while True:
                for commit in await journal.read(key, after_seq=after):
                    after = commit["seq"]
                    if ((commit.get("run") or {}).get("msg") == msg_id
                            and commit.get("kind") in OUTCOMES):
                        return _print_outcome(commit)
                if time.monotonic() >= deadline:
                    print(f"no outcome for {msg_id} within {args.timeout:g} s; the message "
                          f"stays queued. Is a worker running actor type {args.type!r} on "
                          f"{_journal_where(settings)}? (`loom actor inbox {args.type} "
                          f"{args.id}` lists what is pending)", file=sys.stderr)
                    return 3
                await asyncio.sleep(0.05)
        finally:
            await journal.close()

    return asyncio.run(ask())


def _print_outcome(commit: dict[str, Any]) -> int:
    if commit.get("kind") == "completed":
        print(json.dumps(commit.get("result"), indent=2, ensure_ascii=False))
        return 0
    err = commit.get("error") or {}
    code = f" [{err['code']}]" if err.get("code") else ""
    print(f"error: handler {commit.get('kind')}{code} {err.get('type', 'Error')}: "
          f"{err.get('message', '')}", file=sys.stderr)
    return 1


_FAR_FUTURE = 1e18


def cmd_actor_inbox(args: argparse.Namespace) -> int:
    """Messages, events and timers queued for an actor and not yet consumed."""
    import asyncio

    async def inbox() -> tuple[LoomSettings, list[dict[str, Any]] | None]:
        settings = load_settings()
        journal = _open_existing_journal(settings)
        if journal is None:
            return settings, None
        try:
            return settings, await journal.inbox(_actor_key(args), _FAR_FUTURE)
        finally:
            await journal.close()

    settings, entries = asyncio.run(inbox())
    if entries is None:
        return _nothing(f"no pending messages for {_actor_key(args)}", settings)
    if not entries:  # an answer, not a failure
        print(f"no pending messages for {_actor_key(args)} in {_journal_where(settings)}")
        return 0
    now = time.time()
    for env in entries:
        kind = env.get("kind", "call")
        what = env.get("handler") or env.get("name") or ""
        when = env.get("deliver_at") or 0.0
        due = f" due in {when - now:.1f}s" if when > now else ""
        print(f"{env['id']}  {kind:<5} {what}{due}  payload={json.dumps(env.get('payload'))[:80]}")
    print(f"{len(entries)} pending for {_actor_key(args)} (drop one with: loom actor drop "
          f"{args.type} {args.id} <id>)")
    return 0


def cmd_actor_drop(args: argparse.Namespace) -> int:
    """Remove one pending inbox entry (it becomes a tombstone, so a re-send is refused too)."""
    import asyncio

    async def drop() -> int:
        settings = load_settings()
        journal = _open_existing_journal(settings)
        if journal is None:
            return _nothing(f"no pending message {args.msg_id} for {_actor_key(args)}",
                            settings)
        try:
            pending = {e["id"]: e for e in await journal.inbox(_actor_key(args), _FAR_FUTURE)}
            if args.msg_id not in pending:
                return _nothing(f"no pending message {args.msg_id} for {_actor_key(args)}",
                                settings)
            await journal.consume(_actor_key(args), [args.msg_id], time.time())
        finally:
            await journal.close()
        env = pending[args.msg_id]
        print(f"dropped {args.msg_id} ({env.get('kind', 'call')} "
              f"{env.get('handler') or env.get('name') or ''}) from {_actor_key(args)}")
        return 0

    return asyncio.run(drop())


def cmd_check(args: argparse.Namespace) -> int:
    from runtime.actors.lint import check_file

    bad = 0
    for path in args.files:
        for v in check_file(path):
            print(v)
            bad += 1
    print(f"{len(args.files)} file(s) checked, {bad} problem(s)")
    return 1 if bad else 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.actors.worker import run_worker

    if args.json_logs:
        os.environ["LOOM_JSON_LOGS"] = "1"
    asyncio.run(run_worker(args.module, load_settings(), poll_interval_s=args.poll,
                           drain_timeout_s=args.drain_timeout))
    return 0


# -- workflows -----------------------------------------------------------------------------

def _load_workflow(path: str, ex: Executor | None = None) -> Any:
    from wdl import validate

    def known(name: str, version: str | None) -> bool:
        assert ex is not None
        try:
            ex.registry.get(name, version)
            return True
        except errors.NotFound:
            return False

    try:
        raw = parse_json_text(Path(path).read_bytes(), path)
    except OSError as exc:
        raise errors.WorkflowInvalid(path, [{"path": "", "message": str(exc)}]) from None
    except JsonTextError as exc:
        raise errors.WorkflowInvalid(path, [{"path": "", "message": f"not JSON: {exc.reason}"}]
                                     ) from None
    return validate(raw, source=path, known_activity=known if ex is not None else None)


def cmd_wdl_validate(args: argparse.Namespace) -> int:
    if args.offline:
        wf = _load_workflow(args.file)
    else:
        with Executor() as ex:
            try:
                wf = _load_workflow(args.file, ex)
            except errors.WorkflowInvalid as exc:
                if any("is not registered" in p.get("message", "") for p in exc.problems):
                    exc.message += (f"\n(looked in the {_registry_where(ex.settings)}; upload "
                                    "the samples with `loom activity upload activities/build`, "
                                    "or check the file alone with --offline)")
                raise
    print(f"{args.file}: {wf.ref} is valid ({len(wf.steps)} top-level steps)")
    return 0


def cmd_wdl_graph(args: argparse.Namespace) -> int:
    from wdl import mermaid

    text = mermaid(_load_workflow(args.file))
    if args.format == "svg":
        import shutil
        import subprocess

        mmdc = shutil.which("mmdc")
        if mmdc is None:
            raise errors.NotFound("--format svg needs the Mermaid CLI (`mmdc`) on PATH; "
                                  "use the default mermaid text instead")
        subprocess.run([mmdc, "-i", "-", "-o", args.output or "workflow.svg"],
                       input=text.encode(), check=True)
        return 0
    print(text, end="")
    return 0


def cmd_wdl_run(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from runtime.actors import ActorRuntime
    from runtime.actors.loading import actor_classes, load_module
    from runtime.journal import open_journal
    from wdl import run_workflow

    data = _read_json_arg(args.input, args.input_file, "input")
    settings = load_settings()
    with Executor(settings) as ex:
        wf = _load_workflow(args.file, ex)
        instance = args.instance or f"{wf.name}-{uuid.uuid4().hex[:8]}"
        print(f"running {wf.ref} as workflow/{instance} (send events with: loom wdl "
              f"send-event {instance} <event> '<json>')")

        async def go() -> dict[str, Any]:
            journal = open_journal(settings)
            async with ActorRuntime(journal, ex, poll_interval_s=0.05) as rt:
                for spec in args.actors or []:
                    for cls in actor_classes(load_module(spec)):
                        rt.register(cls)
                result = await run_workflow(rt, wf, data, instance=instance)
            await journal.close()
            return result

        result = asyncio.run(go())
    print(json.dumps(result, indent=2))
    return 0 if result.get("status") == "completed" else 1


def cmd_wdl_send_event(args: argparse.Namespace) -> int:
    args.type, args.id, args.name, args.event, args.msg_id = (
        "workflow", args.instance, args.event_name, True, None)
    return cmd_actor_send(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loom", description="WASM activities, sandboxed; durable actors and workflows.",
        epilog="State lives in LOOM_HOME (default ./.loom); see README.md for every LOOM_ "
               "setting.")
    _log_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _log_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="group", required=True)

    def leaf(group: Any, name: str, text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = group.add_parser(name, help=text, description=text,
                                                         parents=[common])
        return made

    act = sub.add_parser("activity", help="build, upload, list, show, yank and invoke activities")
    acts = act.add_subparsers(dest="command", required=True)
    up = leaf(acts, "upload", "validate and store a .wasm with its manifest (or every "
                              "<name>.wasm + <name>.manifest.json of a folder)")
    up.add_argument("wasm", help="a .wasm file, or a folder such as activities/build")
    up.add_argument("--manifest", help="default: <name>.manifest.json next to the .wasm")
    up.set_defaults(func=cmd_upload)
    leaf(acts, "list", "list activities and versions").set_defaults(func=cmd_list)
    show = leaf(acts, "show", "print a manifest (name or name@version)")
    show.add_argument("ref")
    show.set_defaults(func=cmd_show)
    yank = leaf(acts, "yank", "withdraw a version: pinned callers still get it, it is no "
                              "longer 'latest'")
    yank.add_argument("ref", help="name@version")
    yank.add_argument("--reason", help="recorded with the yank")
    yank.add_argument("--undo", action="store_true", help="make the version eligible again")
    yank.set_defaults(func=cmd_yank)
    cli_build.register(acts, leaf)  # build, new
    inv = leaf(acts, "invoke", "run an activity and print its output")
    inv.add_argument("ref", help="name or name@version")
    src = inv.add_mutually_exclusive_group()
    src.add_argument("--input", help="JSON input")
    src.add_argument("--input-file", help="file holding the JSON input")
    inv.add_argument("--idempotency-key")
    inv.add_argument("--tenant", default="")
    inv.add_argument("--timeout-ms", type=int, help="shorten the manifest's deadline")
    inv.add_argument("-v", "--verbose", action="store_true", help="print time, memory, logs")
    inv.set_defaults(func=cmd_invoke)
    sb = leaf(sub, "sandbox", "run a .wasm + manifest once in a throwaway registry")
    sb.add_argument("wasm")
    sb.add_argument("--manifest", required=True)
    sbsrc = sb.add_mutually_exclusive_group()
    sbsrc.add_argument("--input")
    sbsrc.add_argument("--input-file")
    sb.add_argument("--timeout-ms", type=int, help="shorten the manifest's deadline")
    sb.set_defaults(func=None, sandbox=True)

    actor = sub.add_parser("actor", help="message, inspect and replay durable actors")
    actors = actor.add_subparsers(dest="command", required=True)
    for name, fn, text in (
            ("journal", cmd_actor_journal, "print an actor's journal"),
            ("show", cmd_actor_show, "print an actor's committed state and recent outcomes"),
            ("inbox", cmd_actor_inbox, "list the messages, events and timers queued for an "
                                       "actor")):
        p = leaf(actors, name, text)
        p.add_argument("type")
        p.add_argument("id")
        if name == "show":
            p.add_argument("--last", type=int, default=5, help="recent outcomes to list")
        p.set_defaults(func=None, direct=fn)
    cli_service.register_actor_list(actors, leaf)
    dp = leaf(actors, "drop", "remove one pending message from an actor's inbox")
    dp.add_argument("type")
    dp.add_argument("id")
    dp.add_argument("msg_id")
    dp.set_defaults(func=None, direct=cmd_actor_drop)
    rp = leaf(actors, "replay", "re-run recorded runs against current code")
    rp.add_argument("type")
    rp.add_argument("id")
    rp.add_argument("--module", required=True, help="module or .py file defining the actor")
    rp.set_defaults(func=None, direct=cmd_actor_replay)
    for name, is_event in (("send", False), ("signal", True)):
        p = leaf(actors, name, "queue a message" if not is_event else "raise an event")
        p.add_argument("type")
        p.add_argument("id")
        p.add_argument("name", help="handler name" if not is_event else "event name")
        p.add_argument("--payload", default="null", help="JSON; the handler's one argument")
        p.add_argument("--msg-id", help="message id (a repeated id is delivered once)")
        p.set_defaults(func=None, direct=cmd_actor_send, event=is_event)
    cn = leaf(actors, "cancel", "cancel the actor's current run (its saga compensates)")
    cn.add_argument("type")
    cn.add_argument("id")
    cn.add_argument("--reason", default="cancelled by an operator")
    cn.set_defaults(func=None, direct=cmd_actor_cancel)
    ask = leaf(actors, "ask", "call a handler and wait for its durable outcome")
    ask.add_argument("type")
    ask.add_argument("id")
    ask.add_argument("name", help="handler name")
    ask.add_argument("--payload", default="null", help="JSON; the handler's one argument")
    ask.add_argument("--msg-id", help="message id (asking again with it reads the outcome)")
    ask.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (exit 3 "
                                                                  "when no outcome came)")
    ask.set_defaults(func=None, direct=cmd_actor_ask)
    dl = sub.add_parser("dlq", help="dead-lettered messages: list, show, retry, drop")
    dls = dl.add_subparsers(dest="command", required=True)
    leaf(dls, "list", "every dead-lettered message").set_defaults(func=None, direct=cmd_dlq)
    for name, text in (("show", "one dead letter, with its message and last error"),
                       ("retry", "send the message again (as a new message) and unlist it"),
                       ("drop", "unlist a dead letter")):
        dp2 = leaf(dls, name, text)
        dp2.add_argument("type")
        dp2.add_argument("id")
        dp2.add_argument("msg_id")
        dp2.set_defaults(func=None, direct=cmd_dlq)
    cluster = sub.add_parser("cluster", help="a fleet of workers (LOOM_REDIS_URL)")
    clusters = cluster.add_subparsers(dest="command", required=True)
    st = leaf(clusters, "status", "workers, partition owners and epochs, due actors")
    st.set_defaults(func=None, direct=cmd_cluster_status)
    chk = leaf(sub, "check", "lint actor modules for non-determinism")
    chk.add_argument("files", nargs="+")
    chk.set_defaults(func=None, direct=cmd_check)
    wdl = sub.add_parser("wdl", help="validate, draw and run JSON workflows")
    wdls = wdl.add_subparsers(dest="command", required=True)
    v = leaf(wdls, "validate", "report every problem with its JSON path")
    v.add_argument("file")
    v.add_argument("--offline", action="store_true", help="do not check the registry")
    v.set_defaults(func=None, direct=cmd_wdl_validate)
    g = leaf(wdls, "graph", "print a Mermaid flowchart")
    g.add_argument("file")
    g.add_argument("--format", choices=["mermaid", "svg"], default="mermaid")
    g.add_argument("--output")
    g.set_defaults(func=None, direct=cmd_wdl_graph)
    r = leaf(wdls, "run", "run a workflow on the embedded default")
    r.add_argument("file")
    rsrc = r.add_mutually_exclusive_group()
    rsrc.add_argument("--input")
    rsrc.add_argument("--input-file")
    r.add_argument("--instance", help="instance id (rerun the same id to resume it)")
    r.add_argument("--actors", action="append", help="module/file with actors for agent steps")
    r.set_defaults(func=None, direct=cmd_wdl_run, verbose_default=True)
    se = leaf(wdls, "send-event", "raise an event at a running instance")
    se.add_argument("instance")
    se.add_argument("event_name")
    se.add_argument("payload", nargs="?", default="null")
    se.set_defaults(func=None, direct=cmd_wdl_send_event)

    cli_service.register(sub, leaf)  # serve, keys, schedule
    wk = leaf(sub, "worker", "run the actors of a module")
    wk.add_argument("--module", required=True)
    wk.add_argument("--poll", type=float, default=0.05, help="inbox poll interval (s)")
    wk.add_argument("--json-logs", action="store_true",
                    help="one JSON object per log line, with actor, seq, idempotency key and "
                         "trace id (also LOOM_JSON_LOGS=1)")
    wk.add_argument("--drain-timeout", type=float, default=30.0,
                    help="on SIGTERM, seconds to let runs in flight finish (a second SIGTERM "
                         "stops at once; unfinished runs resume elsewhere by replay)")
    wk.set_defaults(func=None, direct=cmd_worker, verbose_default=True)
    return parser


def _log_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=default, help="Loom's log level (default: info for worker "
                        "and wdl run, warning otherwise)")
    parser.add_argument("--sdk-log", action="store_true",
                        default=argparse.SUPPRESS if default is argparse.SUPPRESS else False,
                        help="also show the Azure/Redis SDKs' logs (every HTTP request) at "
                             "--log-level")


@contextlib.contextmanager
def logging_setup(level: str | None, *, sdk: bool = False, long_running: bool = False,
                  stream: Any = None) -> Iterator[None]:
    """Loom's own concise lines on stderr; third-party SDK loggers only when asked for.

    Everything is put back on exit, so `main()` can be called in-process (tests)."""
    chosen = getattr(logging, (level or ("info" if long_running else "warning")).upper())
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(chosen)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(chosen if sdk else max(chosen, logging.WARNING))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, old in saved[1].items():
            logging.getLogger(name).setLevel(old)


def _printable(text: str) -> str:
    """Escape what a terminal would act on (line breaks, escape sequences): one error, one
    line, whatever a field name or a guest's message contains."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _describe_error(exc: errors.LoomError) -> str:
    if isinstance(exc, errors.WorkflowInvalid):  # one problem per line, by design
        return "\n".join(_printable(line) for line in str(exc).split("\n"))
    text = _printable(str(exc))
    code = exc.details.get("code") if isinstance(exc.details, dict) else None
    if isinstance(exc, errors.GuestError) and code:  # the guest's own code comes first
        text = text.replace(f"[{exc.code.value}", f"[{code} ({exc.code.value})", 1)
    if isinstance(exc, errors.NotFound) and exc.activity:
        with contextlib.suppress(errors.LoomError):
            text += f" (looked in the {_registry_where(load_settings())})"
    if isinstance(exc, errors.ActivityError) and exc.retryable:
        text += " (retryable)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with logging_setup(getattr(args, "log_level", None), sdk=getattr(args, "sdk_log", False),
                       long_running=getattr(args, "verbose_default", False)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "sandbox", False):
            return cmd_sandbox(args)
        direct = getattr(args, "direct", None)
        if direct is not None:
            code_: int = direct(args)
            return code_
        with Executor() as ex:
            code: int = args.func(ex, args)
            return code
    except errors.LoomError as exc:
        print(f"error: {_describe_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("LOOM_DEBUG"):
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); this is a bug in Loom, "
              "please report it (LOOM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
