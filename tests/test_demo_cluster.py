"""`make cluster` in short: redis-server, three `loom worker`s, a load, one worker killed
midway; every message sent completes, the survivors drain and exit 0, Redis stops."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


def test_the_cluster_demo_runs_kills_one_and_stops_cleanly() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH: run `make emulators-install`")
    done = subprocess.run(
        [sys.executable, "-m", "runtime.demo.cluster", "--seconds", "9", "--kill-one",
         "--every", "1.5", "--lease-ttl", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "SIGKILL worker" in out, out
    assert re.search(r"workers 3, unowned 0/12", out), out  # all three shared the partitions
    sent = re.search(r"sent (\d+) messages, (\d+) runs completed", out)
    assert sent and int(sent[1]) > 0 and sent[1] == sent[2], out
    codes = re.search(r"workers exited: (\{.*\})", out)
    assert codes and codes[1].count(": 0") == 2 and ": -9" in codes[1], out
    assert "redis-server stopped" in out, out
