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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "sandbox", False):
            return cmd_sandbox(args)
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
