"""The actor commands end to end: `loom worker` in a real process, driven by the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOM = [sys.executable, "-m", "runtime.cli"]
ACTORS = Path(__file__).parent / "cli_actors"
pytestmark = pytest.mark.system


def loom(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*LOOM, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"loom {' '.join(args)} -> {done.returncode}\n{done.stderr}")
    return done


def test_worker_send_journal_show_replay(tmp_path: Path) -> None:
    env = {**os.environ, "LOOM_HOME": str(tmp_path / "home")}
    build = ROOT / "activities" / "build"
    loom(env, "activity", "upload", str(build / "echo.wasm"), "--manifest",
         str(build / "echo.manifest.json"))
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*LOOM, "worker", "--module", str(ACTORS / "counter.py"),
                               "--poll", "0.01"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        for n, msg in ((2, "m1"), (5, "m2"), (5, "m2")):  # m2 twice: processed once
            out = loom(env, "actor", "send", "counter", "c1", "add", "--payload",
                       json.dumps({"n": n}), "--msg-id", msg)
            assert msg in out.stdout
        deadline = time.monotonic() + 30
        while True:
            shown = json.loads(loom(env, "actor", "show", "counter", "c1", check=False).stdout
                               or "{}")
            if shown.get("state") == {"total": 7}:
                break
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        assert shown["seq"] == 1 and shown["run_in_progress"] is False
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, (tmp_path / "worker.log").read_text()
    journal = loom(env, "actor", "journal", "counter", "c1").stdout
    assert journal.count("completed") == 2 and "activity.done echo" in journal
    # each activity step records what it used, shown per attempt
    assert journal.count("used: ") == 2 and "instance" in journal and " ms" in journal
    same = loom(env, "actor", "replay", "counter", "c1", "--module", str(ACTORS / "counter.py"))
    assert "no divergence" in same.stdout
    changed = loom(env, "actor", "replay", "counter", "c1", "--module",
                   str(ACTORS / "counter_v2.py"), check=False)
    assert changed.returncode == 1 and "DIVERGENCE FOUND" in changed.stdout
    assert "diverged" in changed.stdout


def test_check_and_bad_input_errors(tmp_path: Path) -> None:
    env = {**os.environ, "LOOM_HOME": str(tmp_path / "home")}
    assert loom(env, "check", str(ACTORS / "counter.py")).returncode == 0
    bad = loom(env, "actor", "send", "counter", "c1", "add", "--payload", "{not json",
               check=False)
    assert bad.returncode == 2 and "payload is not valid JSON" in bad.stderr
    missing = loom(env, "actor", "replay", "counter", "c1", "--module", "no/such.py",
                   check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
