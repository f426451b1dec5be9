"""The `loom` command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.executor import Executor, InvocationResult
from runtime.settings import load_settings

PROGRESS_THRESHOLD = 1024 * 1024


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, version or None


def _read_json_arg(text: str | None, path: str | None, what: str) -> Any:
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise errors.InputInvalid(f"cannot read {what} file {path}: {exc.strerror}") from None
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InputInvalid(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise errors.NotFound(f"cannot read {what} {path}: {exc.strerror}") from None


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
        return json.loads(_read_file(path, "manifest"))
    except json.JSONDecodeError as exc:
        raise errors.ManifestInvalid(f"{path} is not valid JSON: {exc.msg} at line "
                                     f"{exc.lineno} column {exc.colno}") from None


def cmd_upload(ex: Executor, args: argparse.Namespace) -> int:
    wasm = _read_file(args.wasm, "wasm file")
    raw = _load_manifest(args.manifest)
    progress = _progress if len(wasm) >= PROGRESS_THRESHOLD else None
    result = ex.upload(wasm, raw, progress=progress)
    m = result.manifest
    state = "uploaded" if result.created else "already present (identical), nothing changed"
    print(f"{m.ref} {state}: {len(wasm):,} bytes, sha256 {m.sha256[:16]}…, abi {m.abi.value}")
    return 0


def cmd_list(ex: Executor, args: argparse.Namespace) -> int:
    names = ex.registry.names()
    if not names:
        print(f"no activities in {ex.registry.blob.url}")
        return 0
    print(f"{'NAME':<24} {'LATEST':<12} {'ABI':<13} VERSIONS")
    for name in names:
        versions = ex.registry.versions(name)
        latest = ex.registry.get(name, versions[-1])
        print(f"{name:<24} {latest.version:<12} {latest.abi.value:<13} {', '.join(versions)}")
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
                        tenant=args.tenant)
    _print_result(result, verbose=args.verbose)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run one .wasm + manifest in a throwaway registry and report limits and resource use."""
    wasm = _read_file(args.wasm, "wasm file")
    manifest = _load_manifest(args.manifest)
    data = _read_json_arg(args.input, args.input_file, "input")
    with tempfile.TemporaryDirectory(prefix="loom-sandbox-") as home, \
            Executor(load_settings(home=Path(home), cache_dir=Path(".loom/cache"))) as ex:
        m = ex.upload(wasm, manifest).manifest
        lim = m.limits
        print(f"sandbox {m.ref} ({m.abi.value}): memory {lim.memory_bytes // 1024} KiB, "
              f"timeout {lim.timeout_ms} ms, fuel {lim.fuel or 'off'}, stack "
              f"{lim.stack_bytes // 1024} KiB, input<= {lim.max_input_bytes:,} B, "
              f"output<= {lim.max_output_bytes:,} B", file=sys.stderr)
        caps = m.capabilities.model_dump(exclude_defaults=True)
        print(f"capabilities: {json.dumps(caps) if caps else 'none'}", file=sys.stderr)
        _print_result(ex.execute(m.name, data, version=m.version), verbose=True)
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
    return f"step {e['step']}: {e['op']} {e['name']}{extra}"


def cmd_actor_journal(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.journal import open_journal

    async def show() -> int:
        journal = open_journal(load_settings())
        commits = await journal.read(_actor_key(args))
        await journal.close()
        if not commits:
            print(f"no journal for {_actor_key(args)}")
            return 1
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
                print(f"        error: {c['error'].get('type')}: {c['error'].get('message')}")
            if "state" in c:
                print(f"        state: {json.dumps(c['state'])[:200]}")
        return 0

    return asyncio.run(show())


def cmd_actor_show(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.journal import open_journal

    async def show() -> int:
        journal = open_journal(load_settings())
        tail = await journal.read_tail(_actor_key(args))
        await journal.close()
        if not tail:
            print(f"{_actor_key(args)} has no journal")
            return 1
        state = tail[0].get("state") if "state" in tail[0] else None
        print(json.dumps({"actor": _actor_key(args), "seq": tail[-1]["seq"],
                          "state": state, "run_in_progress": "state" not in tail[-1]},
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


def cmd_actor_send(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from runtime.journal import open_journal

    payload = _read_json_arg(args.payload, None, "payload")

    async def send() -> int:
        journal = open_journal(load_settings())
        msg_id = args.msg_id or str(uuid.uuid4())
        env: dict[str, Any] = {"id": msg_id, "target": _actor_key(args), "payload": payload,
                               "deliver_at": 0.0}
        if args.event:
            env.update(kind="event", name=args.name)
        else:
            env.update(kind="call", handler=args.name)
        created = await journal.enqueue(env)
        await journal.close()
        print(f"{'queued' if created else 'already queued (same id)'} {msg_id}")
        return 0

    return asyncio.run(send())


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
    import logging

    from runtime.actors.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_worker(args.module, load_settings(), poll_interval_s=args.poll))
    return 0


# -- workflows -----------------------------------------------------------------------------

def _load_workflow(path: str, ex: Executor | None = None) -> Any:
    from wdl import load

    def known(name: str, version: str | None) -> bool:
        assert ex is not None
        try:
            ex.registry.get(name, version)
            return True
        except errors.NotFound:
            return False

    return load(path, known_activity=known if ex is not None else None)


def cmd_wdl_validate(args: argparse.Namespace) -> int:
    if args.offline:
        wf = _load_workflow(args.file)
    else:
        with Executor() as ex:
            wf = _load_workflow(args.file, ex)
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
    import logging
    import uuid

    from runtime.actors import ActorRuntime
    from runtime.actors.loading import actor_classes, load_module
    from runtime.journal import open_journal
    from wdl import run_workflow

    logging.basicConfig(format="  %(message)s")
    logging.getLogger("loom.wdl").setLevel(logging.INFO)
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
    parser = argparse.ArgumentParser(prog="loom", description="WASM activities, sandboxed.")
    sub = parser.add_subparsers(dest="group", required=True)
    act = sub.add_parser("activity", help="upload, list, show and invoke activities")
    acts = act.add_subparsers(dest="command", required=True)
    up = acts.add_parser("upload", help="validate and store a .wasm with its manifest")
    up.add_argument("wasm")
    up.add_argument("--manifest", required=True)
    up.set_defaults(func=cmd_upload)
    acts.add_parser("list", help="list activities and versions").set_defaults(func=cmd_list)
    show = acts.add_parser("show", help="print a manifest (name or name@version)")
    show.add_argument("ref")
    show.set_defaults(func=cmd_show)
    inv = acts.add_parser("invoke", help="run an activity and print its output")
    inv.add_argument("ref", help="name or name@version")
    src = inv.add_mutually_exclusive_group()
    src.add_argument("--input", help="JSON input")
    src.add_argument("--input-file", help="file holding the JSON input")
    inv.add_argument("--idempotency-key")
    inv.add_argument("--tenant", default="")
    inv.add_argument("-v", "--verbose", action="store_true", help="print time, memory, logs")
    inv.set_defaults(func=cmd_invoke)
    sb = sub.add_parser("sandbox", help="run a .wasm + manifest once in a throwaway registry")
    sb.add_argument("wasm")
    sb.add_argument("--manifest", required=True)
    sbsrc = sb.add_mutually_exclusive_group()
    sbsrc.add_argument("--input")
    sbsrc.add_argument("--input-file")
    sb.set_defaults(func=None, sandbox=True)

    actor = sub.add_parser("actor", help="inspect, message and replay durable actors")
    actors = actor.add_subparsers(dest="command", required=True)
    for name, fn, text in (("journal", cmd_actor_journal, "print an actor's journal"),
                           ("show", cmd_actor_show, "print an actor's committed state")):
        p = actors.add_parser(name, help=text)
        p.add_argument("type")
        p.add_argument("id")
        p.set_defaults(func=None, direct=fn)
    rp = actors.add_parser("replay", help="re-run recorded runs against current code")
    rp.add_argument("type")
    rp.add_argument("id")
    rp.add_argument("--module", required=True, help="module or .py file defining the actor")
    rp.set_defaults(func=None, direct=cmd_actor_replay)
    for name, is_event in (("send", False), ("signal", True)):
        p = actors.add_parser(name, help="queue a message" if not is_event else "raise an event")
        p.add_argument("type")
        p.add_argument("id")
        p.add_argument("name", help="handler name" if not is_event else "event name")
        p.add_argument("--payload", default="null")
        p.add_argument("--msg-id")
        p.set_defaults(func=None, direct=cmd_actor_send, event=is_event)
    chk = sub.add_parser("check", help="lint actor modules for non-determinism")
    chk.add_argument("files", nargs="+")
    chk.set_defaults(func=None, direct=cmd_check)
    wdl = sub.add_parser("wdl", help="validate, draw and run JSON workflows")
    wdls = wdl.add_subparsers(dest="command", required=True)
    v = wdls.add_parser("validate", help="report every problem with its JSON path")
    v.add_argument("file")
    v.add_argument("--offline", action="store_true", help="do not check the registry")
    v.set_defaults(func=None, direct=cmd_wdl_validate)
    g = wdls.add_parser("graph", help="print a Mermaid flowchart")
    g.add_argument("file")
    g.add_argument("--format", choices=["mermaid", "svg"], default="mermaid")
    g.add_argument("--output")
    g.set_defaults(func=None, direct=cmd_wdl_graph)
    r = wdls.add_parser("run", help="run a workflow on the embedded default")
    r.add_argument("file")
    rsrc = r.add_mutually_exclusive_group()
    rsrc.add_argument("--input")
    rsrc.add_argument("--input-file")
    r.add_argument("--instance", help="instance id (rerun the same id to resume it)")
    r.add_argument("--actors", action="append", help="module/file with actors for agent steps")
    r.set_defaults(func=None, direct=cmd_wdl_run)
    se = wdls.add_parser("send-event", help="raise an event at a running instance")
    se.add_argument("instance")
    se.add_argument("event_name")
    se.add_argument("payload", nargs="?", default="null")
    se.set_defaults(func=None, direct=cmd_wdl_send_event)

    wk = sub.add_parser("worker", help="run the actors of a module")
    wk.add_argument("--module", required=True)
    wk.add_argument("--poll", type=float, default=0.05, help="inbox poll interval (s)")
    wk.set_defaults(func=None, direct=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
