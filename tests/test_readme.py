"""Every code block of README.md runs as written, in order, on a fresh checkout (issue 8
item 10).

The blocks are read from README.md itself. The repository's tracked files are copied to a
temporary folder (a fresh clone, without build outputs or state; the copy shares `.venv`),
LOOM_HOME points at an empty folder, and then, in README order:

- a block right after `<!-- file: PATH -->` is written to PATH (the tour's own files);
- a block right after `<!-- not-run: why -->` is skipped (kept to a few, each with a reason);
- ```sh blocks run with `bash -e`, ```python blocks with `.venv/bin/python`, both from the
  checkout's root; ```json blocks must at least be valid JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!--\s*(?P<mark>file|not-run):\s*(?P<arg>.*?)\s*-->\n)?"
                   r"^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.M | re.S)
pytestmark = pytest.mark.system


def blocks() -> list[dict[str, str]]:
    return [m.groupdict() for m in BLOCK.finditer(README.read_text())]


def fresh_checkout(dest: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    stamp = ROOT / ".venv" / ".installed"
    if stamp.exists():  # make must not reinstall the shared venv from this copy
        t = stamp.stat().st_mtime - 1
        os.utime(dest / "pyproject.toml", (t, t))
    return dest


def test_the_readme_marks_few_blocks_as_not_run() -> None:
    found = blocks()
    skipped = [b for b in found if b["mark"] == "not-run"]
    assert len(found) >= 10 and len(skipped) <= 4, [b["arg"] for b in skipped]
    assert all(b["arg"] for b in skipped), "each not-run block says why"


def test_every_readme_block_runs_in_order_on_a_fresh_checkout(tmp_path: Path) -> None:
    repo = fresh_checkout(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update(LOOM_HOME=str(tmp_path / "home"), PYTHONPATH=str(repo))
    transcript = []
    for i, block in enumerate(blocks()):
        lang, body, mark = block["lang"], block["body"], block["mark"]
        if mark == "not-run":
            continue
        if mark == "file":
            target = repo / block["arg"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
            continue
        if lang == "json":
            json.loads(body)
            continue
        if lang == "sh":
            cmd = ["bash", "-e", "-c", body]
        elif lang == "python":
            script = repo / f"_readme_block_{i}.py"
            script.write_text(body)
            cmd = [str(repo / ".venv" / "bin" / "python"), script.name]
        else:
            raise AssertionError(f"block {i} ({lang!r}) is neither runnable nor a file:\n{body}")
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=240)
        transcript.append(f"$ block {i} ({lang}) -> {done.returncode}\n{done.stdout}"
                          f"{done.stderr}")
        assert done.returncode == 0, "\n".join(transcript)
        assert "Traceback" not in done.stderr, "\n".join(transcript)
    text = "\n".join(transcript)
    assert '"hello": "Ada"' in text  # the tour's own activity ran
    assert text.count('"delivered"') >= 1 and "delivered\n" in text  # both actor runs
    assert not (repo / ".loom").exists(), "state went to LOOM_HOME, not the checkout"
