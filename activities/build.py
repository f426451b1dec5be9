"""Build the sample activities: activities/src/<name>.c -> activities/build/<name>.wasm.

Each source has a <name>.manifest.json next to it (without sha256); the build writes
activities/build/<name>.manifest.json with the sha256 of the built module filled in.
Uses the Zig toolchain from the `ziglang` package (wasi-libc included):

    python activities/build.py            # build what is out of date
    python activities/build.py --force    # rebuild everything
    python activities/build.py echo       # only the named activities
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


def compile_command(source: Path, target: Path, abi: str) -> list[str]:
    cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s",
           "-Wall", "-Wextra", f"-Wl,-z,stack-size={STACK_BYTES}", "-I", str(INCLUDE)]
    if abi == "core-v1":
        cmd.append("-mexec-model=reactor")
    elif abi != "wasi-command":
        raise SystemExit(f"{source.name}: unknown abi {abi!r} in its manifest")
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
        raise SystemExit(f"{name}: invalid manifest:\n{exc}") from None


def build(name: str, force: bool) -> None:
    source, manifest_src = SRC / f"{name}.c", SRC / f"{name}.manifest.json"
    wasm, manifest_out = OUT / f"{name}.wasm", OUT / f"{name}.manifest.json"
    if not manifest_src.exists():
        raise SystemExit(f"{name}: missing {manifest_src.relative_to(HERE.parent)}")
    manifest = json.loads(manifest_src.read_text())
    if "sha256" in manifest:
        raise SystemExit(f"{name}: the source manifest must not contain sha256")
    if manifest.get("name") != name:
        raise SystemExit(f"{name}: manifest name {manifest.get('name')!r} != file name")
    validate({**manifest, "sha256": "0" * 64}, name)
    inputs = max(p.stat().st_mtime for p in (source, manifest_src, HEADER, Path(__file__)))
    fresh = wasm.exists() and manifest_out.exists() and wasm.stat().st_mtime > inputs
    if fresh and not force:
        print(f"{name:<14} up to date ({wasm.stat().st_size} bytes)")
        return
    started = time.monotonic()
    tmp = wasm.with_suffix(".wasm.tmp")
    proc = subprocess.run(compile_command(source, tmp, manifest.get("abi", "core-v1")),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"{name}: compile failed (exit {proc.returncode}):\n"
                         f"{proc.stderr or proc.stdout}")
    if proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    tmp.replace(wasm)
    data = wasm.read_bytes()
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_out.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name:<14} {len(data):>7} bytes  {manifest['abi']:<12}  "
          f"{time.monotonic() - started:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="activities to build (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in SRC.glob("*.c"))
    OUT.mkdir(exist_ok=True)
    for name in names:
        if not (SRC / f"{name}.c").exists():
            raise SystemExit(f"{name}: no such activity in {SRC.relative_to(HERE.parent)}")
        build(name, args.force)


if __name__ == "__main__":
    main()
