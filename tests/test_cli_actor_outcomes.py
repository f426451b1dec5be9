"""`loom actor ask/show/inbox/drop` (issue 8 items 9 and 12).

`ask` waits for the durable outcome of a call and prints it; `show` lists recent outcomes
(read from the completing commits); `inbox` lists what is queued for an actor (e.g. for a
misspelled actor type no worker serves) and `drop` removes one entry. Commands that find
nothing say which LOOM_HOME and journal they looked in, and do not create a journal.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]
LOOM = [sys.executable, "-m", "runtime.cli"]
COUNTER = Path(__file__).parent / "cli_actors" / "counter.py"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("LOOM_HOME", str(path))
    monkeypatch.delenv("LOOM_JOURNAL_URL", raising=False)
    return path


def test_nothing_found_names_home_and_journal_and_creates_nothing(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in ("show", "journal", "inbox"):
        code, out, err = run("actor", command, "counter", "c1")
        assert code == 1 and out == ""
        assert f"journal sqlite:///{home.resolve()}/loom.db (LOOM_HOME={home.resolve()}" in err
    assert not home.exists(), "reading must not create an empty journal"
    assert not (tmp_path / ".loom").exists()


def test_inbox_lists_a_message_to_an_unserved_type_and_drop_removes_it(home: Path) -> None:
    code, out, _ = run("actor", "send", "countr", "c1", "add", "--payload", '{"n": 1}',
                       "--msg-id", "m-typo")
    assert code == 0 and "queued m-typo" in out
    run("actor", "signal", "countr", "c1", "poke", "--msg-id", "e-1")
    code, out, _ = run("actor", "inbox", "countr", "c1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("m-typo  call  add") and 'payload={"n": 1}' in lines[0]
    assert lines[1].startswith("e-1  event poke")
    assert "2 pending for countr/c1" in lines[2]
    code, out, _ = run("actor", "drop", "countr", "c1", "m-typo")
    assert code == 0 and out == "dropped m-typo (call add) from countr/c1\n"
    code, out, _ = run("actor", "inbox", "countr", "c1")
    assert [line.split()[0] for line in out.splitlines()[:-1]] == ["e-1"]
    code, _, err = run("actor", "drop", "countr", "c1", "m-typo")  # already gone
    assert code == 1 and "no pending message m-typo for countr/c1" in err
    code, out, _ = run("actor", "send", "countr", "c1", "add", "--msg-id", "m-typo")
    assert "already queued (same id)" in out  # a dropped id stays refused (tombstone)


def test_ask_times_out_with_a_hint_when_no_worker_serves_the_type(home: Path) -> None:
    code, _, err = run("actor", "ask", "countr", "c1", "add", "--payload", '{"n": 1}',
                       "--timeout", "0.3")
    assert code == 3
    assert "no outcome for " in err and "Is a worker running actor type 'countr'" in err
    assert "loom actor inbox countr c1" in err


@pytest.fixture
def worker(home: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "LOOM_HOME": str(home)}
    build = ROOT / "activities" / "build"
    subprocess.run([*LOOM, "activity", "upload", str(build / "echo.wasm")], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=60)
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([*LOOM, "worker", "--module", str(COUNTER), "--poll", "0.01"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "worker.log").read_text()


@pytest.mark.system
def test_ask_prints_the_durable_outcome_and_show_lists_recent_ones(
        worker: dict[str, str]) -> None:
    code, out, err = run("actor", "ask", "counter", "c1", "add", "--payload", '{"n": 2}',
                         "--timeout", "30")
    assert (code, out) == (0, "2\n"), err
    code, out, err = run("actor", "ask", "counter", "c1", "add", "--payload", '{"n": 5}',
                         "--msg-id", "m2")
    assert (code, out) == (0, "7\n"), err
    # asking again with the same id reads the recorded outcome; nothing runs twice
    code, out, _ = run("actor", "ask", "counter", "c1", "add", "--payload", '{"n": 5}',
                       "--msg-id", "m2")
    assert (code, out) == (0, "7\n")
    code, _, err = run("actor", "ask", "counter", "c1", "add", "--payload", '{"m": 1}')
    assert code == 1 and err.startswith("error: handler failed") and "KeyError" in err
    code, out, _ = run("actor", "show", "counter", "c1")
    shown = json.loads(out)
    assert shown["state"] == {"total": 7}
    outcomes = [(r["outcome"], r.get("result")) for r in shown["recent"]]
    assert outcomes == [("completed", 2), ("completed", 7), ("failed", None)]
    assert shown["recent"][1]["msg"] == "m2"
    assert shown["recent"][2]["error"]["type"] == "KeyError"
