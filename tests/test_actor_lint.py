"""The determinism lint for actor modules: `check_source`, registration and `loom check`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime import errors
from runtime.actors import ActorRuntime
from runtime.actors.lint import Violation, check_file, check_source
from runtime.journal import MemoryJournal

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "sample_actors"
LOOM = Path(sys.executable).parent / "loom"


def lint(source: str) -> list[Violation]:
    return check_source(textwrap.dedent(source), "mod.py")


def rules(source: str) -> list[tuple[int, str]]:
    return [(v.line, v.rule) for v in lint(source)]


FLAGGED = {
    "time.time()": ("import time\nx = time.time()\n", 2, "ambient-nondeterminism", "time.time"),
    "time.monotonic()": ("import time\nx = time.monotonic()\n", 2, "ambient-nondeterminism",
                         "time.monotonic"),
    "time.sleep()": ("import time\ntime.sleep(1)\n", 2, "ambient-nondeterminism", "ctx.sleep"),
    "datetime.now()": ("from datetime import datetime\nx = datetime.now()\n", 2,
                       "ambient-nondeterminism", "datetime.now"),
    "datetime.datetime.utcnow()": ("import datetime\nx = datetime.datetime.utcnow()\n", 2,
                                   "ambient-nondeterminism", "datetime.utcnow"),
    "date.today()": ("from datetime import date\nx = date.today()\n", 2,
                     "ambient-nondeterminism", "date.today"),
    "import random": ("import random\n", 1, "forbidden-import", "ctx.random()"),
    "import random as r": ("import random as r\n", 1, "forbidden-import", "random"),
    "from random import choice": ("from random import choice\n", 1, "forbidden-import",
                                  "random"),
    "import secrets": ("import secrets\n", 1, "forbidden-import", "secrets"),
    "uuid.uuid4()": ("import uuid\nx = uuid.uuid4()\n", 2, "ambient-nondeterminism",
                     "ctx.uuid()"),
    "from uuid import uuid4": ("from uuid import uuid4\n", 1, "ambient-nondeterminism",
                               "uuid4"),
    "os.environ[...]": ("import os\nx = os.environ['HOME']\n", 2, "ambient-nondeterminism",
                        "os.environ"),
    "os.environ.get()": ("import os\nx = os.environ.get('HOME')\n", 2,
                         "ambient-nondeterminism", "os.environ"),
    "os.getenv()": ("import os\nx = os.getenv('HOME')\n", 2, "ambient-nondeterminism",
                    "os.getenv"),
    "from os import environ": ("from os import environ\n", 1, "ambient-nondeterminism",
                               "environ"),
    "open()": ("data = open('f.txt').read()\n", 1, "io", "open()"),
    "input()": ("name = input()\n", 1, "io", "input()"),
    "import socket": ("import socket\n", 1, "forbidden-import", "socket"),
    "from socket import socket": ("from socket import socket\n", 1, "forbidden-import",
                                  "socket"),
    "import subprocess": ("import subprocess\n", 1, "forbidden-import", "subprocess"),
    "import urllib.request": ("import urllib.request\n", 1, "forbidden-import",
                              "urllib.request"),
    "from time import time": ("from time import time\n", 1, "ambient-nondeterminism",
                              "from time import time"),
    "from time import sleep": ("from time import sleep\n", 1, "ambient-nondeterminism",
                               "sleep"),
    "asyncio.sleep": ("import asyncio\nasync def f():\n    await asyncio.sleep(1)\n", 3,
                      "ambient-nondeterminism", "ctx.sleep()"),
    "from asyncio import sleep": ("from asyncio import sleep\n", 1, "ambient-nondeterminism",
                                  "sleep"),
}


@pytest.mark.parametrize("case", list(FLAGGED))
def test_ambient_nondeterminism_is_flagged(case: str) -> None:
    source, line, rule, mention = FLAGGED[case]
    found = lint(source)
    assert [(v.line, v.rule) for v in found] == [(line, rule)], found
    assert mention in found[0].message
    assert found[0].path == "mod.py"
    assert str(found[0]).startswith(f"mod.py:{line}: {rule}: ")


EVASIONS = {
    "import time as t": "import time as t\nx = t.time()\n",
    "from datetime import datetime as dt": "from datetime import datetime as dt\nx = dt.now()\n",
    "import os as o": "import os as o\nx = o.environ['HOME']\n",
    "from urllib import request": "from urllib import request\n",
    "from http import client": "from http import client\n",
}


@pytest.mark.parametrize("case", list(EVASIONS))
def test_aliased_or_from_imported_forbidden_names_are_flagged(case: str) -> None:
    assert lint(EVASIONS[case]) != []


def test_every_violation_is_reported_in_line_order() -> None:
    found = rules("""\
        import random
        import time
        from uuid import uuid4

        async def handler(ctx, payload):
            stamp = time.time()
            key = uuid4()
            return open(payload["path"]).read(), stamp, key, random.random()
        """)
    assert found == [(1, "forbidden-import"), (3, "ambient-nondeterminism"),
                     (6, "ambient-nondeterminism"), (8, "io")]


CLEAN = """\
from __future__ import annotations

import asyncio
import datetime as dt
import json
from uuid import UUID

from runtime.actors import Actor, ActorContext, handler


class Booking(Actor, type_name="booking"):
    @handler
    async def book(self, ctx: ActorContext, payload: dict) -> dict:
        when = ctx.now()
        deadline = when + dt.timedelta(minutes=5)
        seat = ctx.random().randint(1, 40)
        ref = ctx.uuid()
        assert isinstance(ref, UUID)
        await ctx.sleep(0.5)
        reply = await ctx.wait_for_event("confirm", timeout=60)
        result = await ctx.call_activity("reserve", {"seat": seat}, retry={"max_attempts": 2})
        await ctx.send("audit/main", "log", {"ref": str(ref)})
        await asyncio.gather()
        return {"at": when.isoformat(), "deadline": deadline.isoformat(),
                "ref": str(ref), "reply": reply, "result": json.dumps(result)}
"""


def test_context_usage_is_allowed() -> None:
    assert lint(CLEAN) == []


def test_lookalike_names_are_not_flagged() -> None:
    assert lint("""\
        def time():
            return 0

        class Clock:
            def now(self):
                return 1

        def uses(ctx, clock, timer):
            return time(), Clock().now(), clock.now(), timer.time_left, ctx.random()
        """) == []


def test_escape_comment_with_a_reason_suppresses_the_line() -> None:
    source = """\
        import time
        started = time.monotonic()  # loom: allow(metrics only, never affects state)
        stamp = time.time()
        import random  # loom:allow(seeded below from the message id)
        """
    assert rules(source) == [(3, "ambient-nondeterminism")]


@pytest.mark.parametrize("comment", ["# loom: allow()", "# loom: allow(   )", "#loom:allow()"])
def test_escape_without_a_reason_is_itself_reported(comment: str) -> None:
    found = lint(f"import time\nx = time.time()  {comment}\n")
    assert [(v.line, v.rule) for v in found] == [(2, "escape-without-reason")]
    assert "must say why" in found[0].message


def test_escape_only_covers_its_own_line() -> None:
    source = """\
        import time  # loom: allow(only the import)
        a = time.time()  # loom: allow(logged, not stored)
        b = time.time()
        """
    assert rules(source) == [(3, "ambient-nondeterminism")]


def test_check_file_reports_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "actor_mod.py"
    bad.write_text("import socket\n")
    found = check_file(bad)
    assert [(v.path, v.line, v.rule) for v in found] == [(str(bad), 1, "forbidden-import")]


# -- registration ------------------------------------------------------------------------------


def test_registering_an_actor_from_a_violating_module_raises_lint_error() -> None:
    from sample_actors.bad_actor import Sloppy

    rt = ActorRuntime(MemoryJournal())
    with pytest.raises(errors.LintError) as info:
        rt.register(Sloppy)
    exc = info.value
    assert exc.code.value == "lint"
    assert "Sloppy" in exc.message and "bad_actor.py" in exc.message
    found = {(d["line"], d["rule"]) for d in exc.details}
    source = (SAMPLES / "bad_actor.py").read_text().splitlines()
    lines = {n for n, text in enumerate(source, start=1)
             if "import random" in text or "time.time()" in text or "os.environ" in text}
    assert {line for line, _ in found} == lines
    assert "sloppy" not in rt.types


def test_registering_without_lint_skips_the_check() -> None:
    from sample_actors.bad_actor import Sloppy

    rt = ActorRuntime(MemoryJournal(), lint=False)
    assert rt.register(Sloppy) is Sloppy
    assert rt.types["sloppy"] is Sloppy


def test_registering_an_actor_from_a_clean_module_works() -> None:
    from sample_actors.clean_actor import Greeter

    async def scenario() -> None:
        async with ActorRuntime(MemoryJournal(), poll_interval_s=0.01) as rt:
            assert rt.register(Greeter) is Greeter
            out = await rt.ask("greeter/g1", "greet", {"name": "Ada"})
            assert set(out) == {"when", "ticket", "lucky"} and 1 <= out["lucky"] <= 6
            assert await rt.state_of("greeter/g1") == {"greeted": ["Ada"]}

    asyncio.run(asyncio.wait_for(scenario(), 10))


# -- loom check ------------------------------------------------------------------------------------


def loom_check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOOM), "check", *map(str, files)], capture_output=True,
                          text=True, timeout=60)


def test_loom_check_exits_1_and_lists_violations() -> None:
    bad = SAMPLES / "bad_actor.py"
    proc = loom_check(bad)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert len([ln for ln in lines if ln.startswith(f"{bad}:")]) == 3
    assert any("forbidden-import: import random" in ln for ln in lines)
    assert any("time.time" in ln for ln in lines)
    assert any("os.environ" in ln for ln in lines)
    assert lines[-1] == "1 file(s) checked, 3 problem(s)"


def test_loom_check_exits_0_for_clean_files(tmp_path: Path) -> None:
    clean = tmp_path / "clean.py"
    clean.write_text(CLEAN)
    proc = loom_check(SAMPLES / "clean_actor.py", clean)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "2 file(s) checked, 0 problem(s)"


def test_loom_check_one_bad_file_among_clean_ones_fails(tmp_path: Path) -> None:
    clean = tmp_path / "clean.py"
    clean.write_text(CLEAN)
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nx = time.time()  # loom: allow()\n")
    proc = loom_check(clean, bad)
    assert proc.returncode == 1
    assert f"{bad}:2: escape-without-reason" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 file(s) checked, 1 problem(s)"
