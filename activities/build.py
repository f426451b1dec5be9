"""Build C activities to WebAssembly: <name>.c + <name>.manifest.json -> <name>.wasm.

Each source has a <name>.manifest.json next to it (without sha256); the build writes
<name>.wasm and <name>.manifest.json with the sha256 of the built module filled in.
Uses the Zig toolchain from the `ziglang` package (wasi-libc included):

    python activities/build.py            # the samples: activities/src/*.c -> activities/build/
    python activities/build.py --force    # rebuild everything
    python activities/build.py echo       # only the named samples
    python activities/build.py path/to/hello.c [--out DIR]   # a source anywhere: the output
                                          # goes to DIR (default: a build/ folder beside it)

`loom activity build path/to/hello.c` runs the same build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
INCLUDE = HERE / "include"
OUT = HERE / "build"
HEADER = INCLUDE / "loom.h"
# Linear-memory (shadow) stack. wasm-ld puts it below the data, so an overflow traps.
STACK_BYTES = 256 * 1024


class BuildError(Exception):
    """A build failed; the message says why (one line, or the compiler's output)."""


def compile_command(source: Path, target: Path, abi: str) -> list[str]:
    cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
           "-Wall", "-Wextra", f"-Wl,-z,stack-size={STACK_BYTES}", "-I", str(INCLUDE),
           "-I", str(source.parent)]
    if abi == "core-v1":
        cmd.append("-mexec-model=reactor")
    elif abi != "wasi-command":
        raise BuildError(f"{source.name}: unknown abi {abi!r} in its manifest")
    return [*cmd, str(source), "-o", str(target)]


def validate(manifest: dict[str, object], name: str) -> None:
    """Check the manifest against the real model when the repo's schemas are importable."""
    sys.path.insert(0, str(HERE.parent))
    try:
        from schemas.manifest import ActivityManifest
    except ImportError:
        return
    finally:
        sys.path.pop(0)
    try:
        ActivityManifest.model_validate(manifest)
    except ValueError as exc:
        raise BuildError(f"{name}: invalid manifest:\n{exc}") from None


def build(name: str, force: bool) -> None:
    """Build the sample `name` (activities/src/<name>.c) into activities/build/."""
    build_file(SRC / f"{name}.c", out_dir=OUT, force=force)


def build_file(source: Path, *, manifest_src: Path | None = None, out_dir: Path | None = None,
               force: bool = False) -> Path:
    """Build `source` (a .c file anywhere) with its manifest (default: <name>.manifest.json
    beside it) into `out_dir` (default: <source folder>/build). Returns the .wasm path."""
    source = Path(source).resolve()
    name = source.stem
    if source.suffix != ".c" or not source.is_file():
        raise BuildError(f"{source}: not a C source file (.c)")
    manifest_src = Path(manifest_src).resolve() if manifest_src else \
        source.with_name(f"{name}.manifest.json")
    out = Path(out_dir).resolve() if out_dir else source.parent / "build"
    wasm, manifest_out = out / f"{name}.wasm", out / f"{name}.manifest.json"
    if manifest_out.resolve() == manifest_src:
        raise BuildError(f"{name}: the output folder must not be the source folder "
                         f"(the built manifest would overwrite {manifest_src.name})")
    if not manifest_src.exists():
        raise BuildError(f"{name}: missing manifest {manifest_src} (write one next to the "
                         "source, without sha256; see activities/README.md)")
    try:
        manifest = json.loads(manifest_src.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BuildError(f"{name}: {manifest_src} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BuildError(f"{name}: {manifest_src} must hold a JSON object")
    if "sha256" in manifest:
        raise BuildError(f"{name}: the source manifest must not contain sha256")
    if manifest.get("name") != name:
        raise BuildError(f"{name}: manifest name {manifest.get('name')!r} != file name "
                         f"{name!r}")
    validate({**manifest, "sha256": "0" * 64}, name)
    out.mkdir(parents=True, exist_ok=True)
    inputs = max(p.stat().st_mtime for p in (source, manifest_src, HEADER, Path(__file__)))
    fresh = wasm.exists() and manifest_out.exists() and wasm.stat().st_mtime > inputs
    if fresh and not force:
        print(f"{name:<14} up to date ({wasm.stat().st_size} bytes)")
        return wasm
    started = time.monotonic()
    tmp = wasm.with_suffix(".wasm.tmp")
    proc = subprocess.run(compile_command(source, tmp, manifest.get("abi", "core-v1")),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{name}: compile failed (exit {proc.returncode}):\n"
                         f"{proc.stderr or proc.stdout}")
    if proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    tmp.replace(wasm)
    data = wasm.read_bytes()
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_out.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name:<14} {len(data):>7} bytes  {manifest.get('abi', 'core-v1'):<12}  "
          f"{time.monotonic() - started:.1f}s")
    return wasm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*",
                        help="sample names or paths of .c files (default: every sample)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--out", help="output folder for .c paths (default: build/ beside "
                                      "each source)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in SRC.glob("*.c"))
    try:
        for name in names:
            if name.endswith(".c") or "/" in name:
                build_file(Path(name), out_dir=Path(args.out) if args.out else None,
                           force=args.force)
                continue
            if not (SRC / f"{name}.c").exists():
                raise BuildError(f"{name}: no such activity in {SRC.relative_to(HERE.parent)} "
                                 "(give a path to build a .c file elsewhere)")
            build(name, args.force)
    except BuildError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
