"""Build activities to WebAssembly: C, Python and JavaScript -> <name>.wasm + manifest.

C: each source has a <name>.manifest.json next to it (without sha256); the build writes
<name>.wasm and <name>.manifest.json with the sha256 of the built module filled in.
Uses the Zig toolchain from the `ziglang` package (wasi-libc included).
Python (.py) and JavaScript (.js) build to components (abi component-v1) with
componentize-py and componentize-js: see build_component.py.

    python activities/build.py            # the samples: activities/src/*.c, py/*.py, js/*.js
                                          # -> activities/build/ (up-to-date ones skipped)
    python activities/build.py --force    # rebuild everything
    python activities/build.py echo       # only the named samples
    python activities/build.py path/to/hello.c [--out DIR]   # a source anywhere: the output
                                          # goes to DIR (default: a build/ folder beside it)
    python activities/build.py --lang c   # only the C samples (also: python, js)

`loom activity build <file>` runs the same build.
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
SAMPLE_DIRS = {"c": (SRC, ".c"), "python": (HERE / "py", ".py"), "js": (HERE / "js", ".js")}
INCLUDE = HERE / "include"
OUT = HERE / "build"
HEADER = INCLUDE / "loom.h"
# Linear-memory (shadow) stack. wasm-ld puts it below the data, so an overflow traps.
STACK_BYTES = 256 * 1024


sys.path.insert(0, str(HERE))
from build_component import BuildError, build_component, read_manifest, validate  # noqa: E402 - needs HERE

sys.path.pop(0)


def compile_command(source: Path, target: Path, abi: str) -> list[str]:
    cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
           "-Wall", "-Wextra", f"-Wl,-z,stack-size={STACK_BYTES}", "-I", str(INCLUDE),
           "-I", str(source.parent)]
    if abi == "core-v1":
        cmd.append("-mexec-model=reactor")
    elif abi != "wasi-command":
        raise BuildError(f"{source.name}: unknown abi {abi!r} in its manifest")
    return [*cmd, str(source), "-o", str(target)]


def build(name: str, force: bool) -> None:
    """Build the sample `name` (activities/src/<name>.c) into activities/build/."""
    build_file(SRC / f"{name}.c", out_dir=OUT, force=force)


def build_file(source: Path, *, manifest_src: Path | None = None, out_dir: Path | None = None,
               force: bool = False, version: str | None = None, **component: object) -> Path:
    """Build `source` (a .c, .py or .js file anywhere) with its manifest (default:
    <name>.manifest.json beside it) into `out_dir` (default: <source folder>/build).
    Returns the .wasm path. `version` overrides the manifest's; `component` options go to
    build_component.build_component (input_schema, output_schema, say)."""
    source = Path(source).resolve()
    name = source.stem
    if source.suffix in (".py", ".js", ".mjs"):
        return build_component(source, out_dir=Path(out_dir) if out_dir else
                               source.parent / "build", manifest_src=manifest_src,
                               version=version, force=force, **component)  # type: ignore[arg-type]
    if source.suffix != ".c" or not source.is_file():
        raise BuildError(f"{source}: not a C source file (.c), Python (.py) or JS (.js)")
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
    manifest = read_manifest(manifest_src)
    if manifest.get("name") != name:
        raise BuildError(f"{name}: manifest name {manifest.get('name')!r} != file name "
                         f"{name!r}")
    if version is not None:
        manifest["version"] = version
    validate({**manifest, "sha256": "0" * 64}, name)
    out.mkdir(parents=True, exist_ok=True)
    headers = [*source.parent.glob("*.h")]  # local headers the source may include
    inputs = max(p.stat().st_mtime for p in (source, manifest_src, HEADER, Path(__file__),
                                             *headers))
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


def samples(langs: list[str]) -> dict[str, Path]:
    """Sample name -> source, for the given languages."""
    found: dict[str, Path] = {}
    for lang in langs:
        folder, suffix = SAMPLE_DIRS[lang]
        for p in sorted(folder.glob(f"*{suffix}")):
            found[p.stem] = p
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*",
                        help="sample names or paths of .c/.py/.js files (default: every sample)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--out", help="output folder for paths (default: build/ beside "
                                      "each source)")
    parser.add_argument("--lang", action="append", choices=sorted(SAMPLE_DIRS),
                        help="only the samples in this language (repeatable)")
    args = parser.parse_args(argv)
    known = samples(args.lang or list(SAMPLE_DIRS))
    names = args.names or list(known)
    try:
        for name in names:
            if Path(name).suffix in (".c", ".py", ".js", ".mjs") or "/" in name:
                build_file(Path(name), out_dir=Path(args.out) if args.out else None,
                           force=args.force)
                continue
            if name not in known:
                raise BuildError(f"{name}: no such sample in activities/src, py or js (give a "
                                 "path to build a file elsewhere)")
            build_file(known[name], out_dir=OUT, force=args.force)
    except BuildError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
