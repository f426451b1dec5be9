"""WDL: validation (every problem with its JSON path), the CLI, Mermaid graphs, and execution
of every step kind as a durable actor on a real executor + SQLite journal + ActorRuntime.

Effects go to a local Provider over the real `http_post` activity (allowlisted to it); the
Provider performs each effect once per Idempotency-Key and logs it, so the tests count real
effects (not distinct keys). Versioning restarts the runtime mid-instance; crash/resume
SIGKILLs a `loom wdl run` process in the middle of an effect and runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import guests
import pytest
from wdl_fixtures.agents import Scorer

from runtime import errors
from runtime.actors import Actor, ActorRuntime, Hooks
from runtime.actors.loading import actor_classes, load_module
from runtime.cli import main as loom_main
from runtime.executor import Executor
from runtime.journal import SqliteJournal
from runtime.settings import load_settings
from schemas.wdl import Workflow
from wdl import WorkflowActor, load, mermaid, run_workflow, start_message, validate

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "activities" / "build"
EXAMPLES = ROOT / "wdl" / "examples"
FIXTURES = Path(__file__).parent / "wdl_fixtures"
SCHEMA_FILE = ROOT / "schemas" / "json" / "workflow.schema.json"
LOOM_BIN = Path(sys.executable).with_name("loom")
LOOM = [str(LOOM_BIN)] if LOOM_BIN.exists() else [sys.executable, "-m", "runtime.cli"]


# -- the provider ------------------------------------------------------------------------------

class Provider:
    """Performs each effect once per Idempotency-Key and logs it (path, key, body).

    A path starting with /fail is refused with 422 (a non-retryable error for http_post), as is
    a body whose address is "nowhere". `extra[path]` adds fields to that path's reply;
    `delays[path]` seconds pass before a request to that path is handled.
    `hold(path)` keeps the reply of that path's first effect until `release()` (the effect is
    already logged): a client killed meanwhile never learns the outcome.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.effects: list[tuple[str, str, Any]] = []
            self.requests = 0
            self.duplicates = 0
            self.refused = 0
            self.extra: dict[str, dict[str, Any]] = {}
            self.delays: dict[str, float] = {}
            self._seen: dict[str, bytes] = {}
            self._held: dict[str, threading.Event] = {}

    def hold(self, path: str) -> threading.Event:
        gate = threading.Event()
        self._held[path] = gate
        return gate

    def release(self) -> None:
        for gate in self._held.values():
            gate.set()

    def handle(self, path: str, key: str, body: Any) -> tuple[int, bytes]:
        time.sleep(self.delays.get(path, 0.0))
        with self._lock:
            self.requests += 1
            if key and key in self._seen:
                self.duplicates += 1
                return 200, self._seen[key]
            if path.startswith("/fail") or (isinstance(body, dict)
                                            and body.get("address") == "nowhere"):
                self.refused += 1
                return 422, b'{"error": "refused"}'
            self.effects.append((path, key, body))
            reply = {"id": f"{path.strip('/').replace('/', '-')}-{len(self.effects)}",
                     "path": path, "got": body, **self.extra.get(path, {})}
            data = json.dumps(reply).encode()
            self._seen[key] = data
            gate = self._held.get(path)
        if gate is not None:
            gate.wait(20)
        return 200, data

    # -- reading -----------------------------------------------------------------------------
    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _, _ in self.effects]

    def keys(self) -> list[str]:
        with self._lock:
            return [k for _, k, _ in self.effects]

    def body(self, path: str) -> Any:
        with self._lock:
            found = [b for p, _, b in self.effects if p == path]
        assert len(found) == 1, f"{path}: {len(found)} effects"
        return found[0]

    def key(self, path: str) -> str:
        with self._lock:
            found = [k for p, k, _ in self.effects if p == path]
        assert len(found) == 1, f"{path}: {len(found)} effects"
        return found[0]

    def wait_for(self, path: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while path not in self.paths():
            if time.monotonic() > deadline:
                raise AssertionError(f"the provider never saw {path} (saw {self.paths()})")
            time.sleep(0.01)


@contextlib.contextmanager
def serve(provider: Provider) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            status, data = provider.handle(self.path, self.headers.get("Idempotency-Key", ""),
                                           json.loads(raw or b"null"))
            with contextlib.suppress(OSError):  # the client may have been killed meanwhile
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        provider.release()
        server.shutdown()
        server.server_close()


def upload_activities(ex: Executor, port: int) -> None:
    """http_post allowlisted to exactly the local provider, and a WAT echo guest."""
    manifest = json.loads((BUILD / "http_post.manifest.json").read_text())
    manifest["capabilities"]["http"] = {
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}], "allow_private": True}
    manifest["retry"] = {"max_attempts": 3, "initial_interval_ms": 10, "max_interval_ms": 50}
    manifest.pop("sha256", None)
    ex.upload((BUILD / "http_post.wasm").read_bytes(), manifest)
    ex.upload(guests.echo(), guests.manifest("echo"))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Provider, str]]:
    provider = Provider()
    with serve(provider) as base:
        yield provider, base


@pytest.fixture
def provider(served: tuple[Provider, str]) -> Provider:
    served[0].reset()
    return served[0]


@pytest.fixture
def base(served: tuple[Provider, str]) -> str:
    return served[1]


@pytest.fixture(scope="module")
def executor(served: tuple[Provider, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    home = tmp_path_factory.mktemp("loom-home")
    ex = Executor(load_settings(home=home, pool_size=4, epoch_tick_ms=5), secrets={}, env={})
    upload_activities(ex, int(served[1].rsplit(":", 1)[1]))
    yield ex
    ex.close()


# -- helpers ----------------------------------------------------------------------------------

def make(*steps: dict[str, Any], name: str = "t", version: str = "1.0.0",
         **fields: Any) -> dict[str, Any]:
    return {"name": name, "version": version, "steps": list(steps), **fields}


def post(id: str, path: str, body: Any = None, **fields: Any) -> dict[str, Any]:
    """An http_post activity step to the provider (its base URL comes from input.provider)."""
    return {"id": id, "kind": "activity", "activity": "http_post",
            "input": {"url": "{{ input.provider }}" + path, "body": body}, **fields}


def known_in(ex: Executor) -> Callable[[str, str | None], bool]:
    def known(name: str, version: str | None) -> bool:
        try:
            ex.registry.get(name, version)
            return True
        except errors.NotFound:
            return False

    return known


def problems_of(raw: Any, **kw: Any) -> list[dict[str, str]]:
    with pytest.raises(errors.WorkflowInvalid) as info:
        validate(raw, **kw)
    assert info.value.details == info.value.problems
    return info.value.problems


def only(problems: list[dict[str, str]]) -> dict[str, str]:
    assert len(problems) == 1, problems
    return problems[0]


async def events_of(journal: SqliteJournal, actor: str) -> list[dict[str, Any]]:
    return [e for c in await journal.read(actor) for e in c.get("events", [])]


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def waiting(journal: SqliteJournal, instance: str, event: str) -> None:
    """Until the instance's journal shows it waiting for `event`."""
    async def started() -> bool:
        return any(e["op"] == "wait.start" and e["name"] == event
                   for e in await events_of(journal, f"workflow/{instance}"))

    await until(started, what=f"workflow/{instance} waiting for {event!r}")


During = Callable[[ActorRuntime, SqliteJournal], Awaitable[None]]


class Run:
    """The outcome of one workflow run, with what the journal kept."""

    def __init__(self, outcome: dict[str, Any], state: Any, commits: list[dict[str, Any]],
                 elapsed: float) -> None:
        self.outcome, self.state, self.commits, self.elapsed = outcome, state, commits, elapsed

    @property
    def output(self) -> Any:
        assert self.outcome["status"] == "completed", self.outcome
        return self.outcome["output"]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for c in self.commits for e in c.get("events", [])]


def execute(ex: Executor, db: Path, wf: Workflow, input: Any, *, instance: str,
            agents: tuple[type[Actor], ...] = (), during: During | None = None,
            linger: float = 0.0) -> Run:
    """Run `wf` as `instance` on a fresh runtime over the SQLite journal `db`; `during` runs
    alongside (signals, ...); the runtime keeps running `linger` s after the outcome."""
    async def go() -> Run:
        journal = SqliteJournal(db)
        rt = ActorRuntime(journal, ex, poll_interval_s=0.01)
        for cls in (WorkflowActor, *agents):
            rt.register(cls)
        try:
            async with rt:  # start() recovers unfinished instances of registered types
                started = time.monotonic()
                task = asyncio.ensure_future(run_workflow(rt, wf, input, instance=instance,
                                                          timeout=20))
                if during is not None:
                    await during(rt, journal)
                outcome = await task
                elapsed = time.monotonic() - started
                await asyncio.sleep(linger)
                state = await rt.state_of(f"workflow/{instance}")
                commits = await journal.read(f"workflow/{instance}")
        finally:
            await journal.close()
        return Run(outcome, state, commits, elapsed)

    return asyncio.run(asyncio.wait_for(go(), 30))


# == validation ================================================================================

def test_unknown_step_kind_is_reported_at_the_step() -> None:
    problem = only(problems_of(make({"id": "a", "kind": "teleport"})))
    assert problem["path"] == "/steps/0"
    assert "'teleport'" in problem["message"]
    assert "'kind'" in problem["message"]
    for kind in ("activity", "agent", "parallel", "condition", "wait", "sleep"):
        assert f"'{kind}'" in problem["message"]  # the expected tags are listed


def test_missing_step_kind_names_the_discriminator() -> None:
    problem = only(problems_of(make(post("a", "/a"), {"id": "b"})))
    assert problem == {"path": "/steps/1",
                       "message": "Unable to extract tag using discriminator 'kind'"}


def test_duplicate_step_ids_are_reported_where_they_repeat() -> None:
    problems = problems_of(make(
        post("a", "/a"),
        {"id": "p", "kind": "parallel", "branches": [[post("b", "/b")], [post("a", "/a2")]]},
        {"id": "c", "kind": "condition", "if": "true",
         "then": [{"id": "b", "kind": "sleep", "seconds": 0}],
         "else": [{"id": "w", "kind": "wait", "event": "e", "timeout_s": 1,
                   "on_timeout": [{"id": "p", "kind": "sleep", "seconds": 0}]}]},
    ))
    assert problems == [
        {"path": "/steps/1/branches/1/0/id",
         "message": "duplicate step id 'a' (first at /steps/0)"},
        {"path": "/steps/2/then/0/id",
         "message": "duplicate step id 'b' (first at /steps/1/branches/0/0)"},
        {"path": "/steps/2/else/0/on_timeout/0/id",
         "message": "duplicate step id 'p' (first at /steps/1)"},
    ]


def test_reference_to_an_undefined_variable_points_at_the_exact_field() -> None:
    problem = only(problems_of(make(
        post("charge", "/charge", {"amount": "{{ input.amount }}"}),
        post("refund", "/refund", {"note": "fine", "amount": "{{ totl.amount }}"}),
    )))
    assert problem == {"path": "/steps/1/input/body/amount",
                       "message": "refers to undefined variable 'totl'"}


def test_undefined_references_in_lists_nested_steps_and_the_output() -> None:
    problems = problems_of(make(
        {"id": "p", "kind": "parallel", "branches": [
            [post("a", "/a", ["ok", {"x": "{{ nope1 }}"}])]]},
        {"id": "ask", "kind": "agent", "type": "scorer", "actor_id": "{{ nope2 }}"},
        output={"list": ["{{ a.body }}", "{{ nope3.x }}"]},
    ))
    assert problems == [
        {"path": "/steps/0/branches/0/0/input/body/1/x",
         "message": "refers to undefined variable 'nope1'"},
        {"path": "/steps/1/actor_id", "message": "refers to undefined variable 'nope2'"},
        {"path": "/output/list/1", "message": "refers to undefined variable 'nope3'"},
    ]


def test_forward_reference_to_a_later_step() -> None:
    problem = only(problems_of(make(
        post("charge", "/charge", {"shipment": "{{ ship.body.id }}"}),
        post("ship", "/ship"),
    )))
    assert problem["path"] == "/steps/0/input/body/shipment"
    assert problem["message"] == ("refers to 'ship', produced by /steps/1 which does not run "
                                  "before this point (a forward reference or cycle)")


def test_self_reference_is_a_cycle() -> None:
    problem = only(problems_of(make(post("a", "/a", {"me": "{{ a.body.id }}"}))))
    assert problem["path"] == "/steps/0/input/body/me"
    assert "produced by /steps/0" in problem["message"] and "cycle" in problem["message"]


def test_sibling_parallel_branches_cannot_see_each_other() -> None:
    problem = only(problems_of(make(
        {"id": "p", "kind": "parallel", "branches": [
            [post("a", "/a")], [post("b", "/b", {"from_a": "{{ a.body.id }}"})]]},
        post("after", "/after", {"a": "{{ a.body.id }}", "b": "{{ b.body.id }}",
                                  "both": "{{ p }}"}),
    )))
    assert problem["path"] == "/steps/0/branches/1/0/input/body/from_a"
    assert "forward reference or cycle" in problem["message"]


def test_a_condition_cannot_read_the_variables_of_its_own_branches() -> None:
    problem = only(problems_of(make(
        {"id": "c", "kind": "condition", "if": "x.status == 200",
         "then": [post("x", "/x")]})))
    assert problem["path"] == "/steps/0/if"
    assert "refers to 'x', produced by /steps/0/then/0" in problem["message"]


def test_compensation_may_read_its_own_step_output_but_not_later_ones() -> None:
    ok = make(post("a", "/a", compensation={
        "activity": "http_post", "input": {"url": "{{ input.provider }}/undo",
                                           "body": "{{ a.body.id }}"}}))
    assert validate(ok).steps[0].compensation is not None
    problem = only(problems_of(make(
        post("a", "/a", compensation={"activity": "http_post", "input": "{{ b.body }}"}),
        post("b", "/b"))))
    assert problem["path"] == "/steps/0/compensation/input"
    assert "forward reference" in problem["message"]


def test_unknown_activity_with_a_registry_check(executor: Executor) -> None:
    known = known_in(executor)
    assert known("http_post", None) and known("echo", "1.0.0") and not known("nope", None)
    problems = problems_of(make(
        post("a", "/a"),
        {"id": "b", "kind": "activity", "activity": "nope"},
        {"id": "c", "kind": "activity", "activity": "echo", "version": "9.9.9"},
        post("d", "/d", compensation={"activity": "undo_nope"}),
    ), known_activity=known)
    assert problems == [
        {"path": "/steps/1/activity", "message": "activity nope is not registered"},
        {"path": "/steps/2/activity", "message": "activity echo@9.9.9 is not registered"},
        {"path": "/steps/3/compensation/activity",
         "message": "activity undo_nope is not registered"},
    ]
    # without a registry check the same workflow is valid
    assert validate(make(post("a", "/a"), {"id": "b", "kind": "activity", "activity": "nope"}))


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0.0", "01.0.0", "latest", ""])
def test_bad_semver(version: str) -> None:
    problem = only(problems_of(make(post("a", "/a"), version=version)))
    assert problem["path"] == "/version"
    assert f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH)" in problem["message"]


@pytest.mark.parametrize("version", ["0.0.1", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0+build.5"])
def test_good_semver(version: str) -> None:
    assert validate(make(post("a", "/a"), version=version)).ref == f"t@{version}"


@pytest.mark.parametrize(("expr", "message"), [
    ("len(input.items) > 0", "Call is not allowed"),
    ("input.n +", "cannot parse"),
    ("input.n + 1 > 2", "BinOp is not allowed"),
    ("input.__class__.__name__ == 'dict' or [x for x in input]", "ListComp is not allowed"),
    ("input.n is None", "operator Is is not allowed"),
    ("missing > 1", "refers to undefined variable 'missing'"),
])
def test_bad_condition_expression(expr: str, message: str) -> None:
    problem = only(problems_of(make(
        post("a", "/a"),
        {"id": "c", "kind": "condition", "if": expr, "then": [post("b", "/b")]})))
    assert problem["path"] == "/steps/1/if"
    assert message in problem["message"]


def test_bad_condition_in_a_nested_branch() -> None:
    problem = only(problems_of(make(
        {"id": "p", "kind": "parallel", "branches": [[
            {"id": "c", "kind": "condition", "if": "lambda: 1"}]]})))
    assert problem["path"] == "/steps/0/branches/0/0/if"
    assert "Lambda is not allowed" in problem["message"]


@pytest.mark.parametrize(("schema", "where", "message"), [
    ({"type": "object", "not": {}}, "/input_schema", "schema #/not: keyword is not supported"),
    ({"type": "objekt"}, "/input_schema", "unknown type 'objekt'"),
    ({"type": "object", "properties": {"n": {"minimum": "zero"}}}, "/input_schema",
     "schema #/properties/n: constraints need a 'type'"),
])
def test_invalid_input_schema(schema: dict[str, Any], where: str, message: str) -> None:
    problem = only(problems_of(make(post("a", "/a"), input_schema=schema)))
    assert problem["path"] == where
    assert message in problem["message"]


def test_invalid_output_schema() -> None:
    problem = only(problems_of(make(post("a", "/a"), output_schema={"$ref": "#/x"})))
    assert problem["path"] == "/output_schema"
    assert "$ref" in problem["message"]


def test_input_schema_must_be_an_object() -> None:
    problem = only(problems_of(make(post("a", "/a"), input_schema=["not", "a", "schema"])))
    assert problem["path"] == "/input_schema"
    assert "dictionary" in problem["message"]


def test_extra_unknown_top_level_field() -> None:
    problem = only(problems_of(make(post("a", "/a"), colour="red")))
    assert problem == {"path": "/colour", "message": "Extra inputs are not permitted"}


def test_errors_inside_steps_point_into_the_document() -> None:
    problems = problems_of(make(
        post("a", "/a", colour="red"),
        {"id": "c", "kind": "condition", "if": ""},
        {"id": "p", "kind": "parallel", "branches": [[post("b", "/b", colour="blue")]]},
    ))
    assert sorted(p["path"] for p in problems) == [
        "/steps/0/colour", "/steps/1/if", "/steps/2/branches/0/0/colour"]


def test_extra_unknown_field_in_a_step_is_reported() -> None:
    # the location is checked (as a bug) above; here: it is refused, and the step is named
    problem = only(problems_of(make(post("a", "/a", colour="red"))))
    assert problem["path"].startswith("/steps/0/")
    assert problem["path"].endswith("/colour")
    assert problem["message"] == "Extra inputs are not permitted"


def test_field_constraints() -> None:
    problems = problems_of(make(
        {"id": "1bad", "kind": "sleep", "seconds": -1},
        {"id": "w", "kind": "wait", "event": "", "timeout_s": 0},
        name="Bad Name"))
    paths = {p["path"] for p in problems}
    assert "/name" in paths
    assert len(problems) == 5, problems  # id pattern, seconds >= 0, empty event, timeout > 0
    assert problems_of(make())[0]["path"] == "/steps"  # at least one step


def test_output_variable_input_is_reserved() -> None:
    problem = only(problems_of(make(post("a", "/a", output="input"))))
    assert problem == {"path": "/steps/0/output",
                       "message": "'input' is reserved for the workflow input"}


def test_several_problems_are_reported_at_once() -> None:
    problems = problems_of(make(
        post("a", "/a", {"x": "{{ ghost }}"}),
        post("a", "/b", {"y": "{{ later.id }}"}),
        {"id": "c", "kind": "condition", "if": "len(a)"},
        post("later", "/later"),
        input_schema={"type": "objekt"},
        output={"z": "{{ phantom }}"},
    ))
    assert [p["path"] for p in problems] == [
        "/input_schema", "/steps/1/id", "/steps/0/input/body/x", "/steps/1/input/body/y",
        "/steps/2/if", "/output/z"]


def test_several_structural_problems_are_reported_at_once() -> None:
    problems = problems_of(make(
        {"id": "a", "kind": "teleport"}, {"id": "b", "kind": "sleep"}, version="one"))
    assert len(problems) == 3, problems
    assert problems[0] == {"path": "/version", "message": "Value error, 'one' is not a "
                           "semantic version (MAJOR.MINOR.PATCH)"}
    assert problems[1]["path"] == "/steps/0" and "'teleport'" in problems[1]["message"]
    # (the exact pointer of a field inside a step is checked as a bug above)
    assert problems[2]["path"].startswith("/steps/1/")
    assert problems[2]["path"].endswith("/seconds")
    assert problems[2]["message"] == "Field required"


def test_the_error_message_lists_every_problem() -> None:
    with pytest.raises(errors.WorkflowInvalid) as info:
        load(FIXTURES / "invalid_many.json")
    exc = info.value
    assert exc.code.value == "workflow_invalid"
    assert exc.problems == [
        {"path": "/steps/2/then/0/id", "message": "duplicate step id 'charge' (first at /steps/0)"},
        {"path": "/steps/1/input/body/amount", "message": "refers to undefined variable 'totl'"},
        {"path": "/steps/2/if", "message": "Call is not allowed in "
                                          "'charge.status == 200 and len(input) > 0'"},
    ]
    text = str(exc)
    assert "invalid-many@1.0.0" in text and "3 problem(s)" in text
    for p in exc.problems:
        assert f"{p['path']}: {p['message']}" in text


def test_load_accepts_a_path_json_text_and_a_dict(tmp_path: Path) -> None:
    raw = make(post("a", "/a"))
    (tmp_path / "w.json").write_text(json.dumps(raw))
    for source in (tmp_path / "w.json", str(tmp_path / "w.json"), json.dumps(raw), raw):
        assert load(source).ref == "t@1.0.0"
    with pytest.raises(errors.WorkflowInvalid) as info:
        load(str(tmp_path / "missing.json"))
    assert info.value.problems[0]["path"] == ""
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(errors.WorkflowInvalid, match="not JSON"):
        load(tmp_path / "bad.json")


def test_a_branch_variable_may_be_referenced_after_the_condition() -> None:
    # documented: validation allows it (it may be unset at run time)
    wf = validate(make(
        {"id": "c", "kind": "condition", "if": "input.go",
         "then": [post("x", "/x")], "else": [post("y", "/y")]},
        output={"x": "{{ x }}", "y": "{{ y }}"}))
    assert [s.id for s in wf.steps] == ["c"]


# == the CLI and graphs ==========================================================================

def _cli(args: list[str], home: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOM_HOME": str(home)}
    return subprocess.run([*LOOM, *args], capture_output=True, text=True, env=env, cwd=home,
                          timeout=timeout)


def test_cli_validate_a_bad_file(tmp_path: Path) -> None:
    done = _cli(["wdl", "validate", "--offline", str(FIXTURES / "invalid_many.json")], tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: [workflow_invalid] ")
    assert "invalid_many.json (invalid-many@1.0.0): 3 problem(s):" in lines[0]
    assert lines[1:] == [
        "  /steps/2/then/0/id: duplicate step id 'charge' (first at /steps/0)",
        "  /steps/1/input/body/amount: refers to undefined variable 'totl'",
        "  /steps/2/if: Call is not allowed in 'charge.status == 200 and len(input) > 0'",
    ]


def test_cli_validate_checks_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOOM_HOME", str(tmp_path))
    example = str(EXAMPLES / "shipping_saga.json")
    assert loom_main(["wdl", "validate", "--offline", example]) == 0
    out = capsys.readouterr()
    assert out.out == f"{example}: shipping-saga@1.0.0 is valid (2 top-level steps)\n"
    assert loom_main(["wdl", "validate", example]) == 2  # empty registry
    err = capsys.readouterr().err
    for where in ("/steps/0/activity", "/steps/0/compensation/activity", "/steps/1/activity",
                  "/steps/1/compensation/activity"):
        assert f"  {where}: activity http_post is not registered" in err
    with Executor(load_settings(home=tmp_path)) as ex:
        upload_activities(ex, 9)
    assert loom_main(["wdl", "validate", example]) == 0
    assert "is valid" in capsys.readouterr().out


def test_cli_validate_a_missing_or_non_json_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert loom_main(["wdl", "validate", "--offline", str(tmp_path / "nope.json")]) == 2
    assert "1 problem(s)" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("[1, 2")
    assert loom_main(["wdl", "validate", "--offline", str(tmp_path / "x.json")]) == 2
    assert "not JSON" in capsys.readouterr().err


def _all_ids(steps: list[Any]) -> list[str]:
    ids = []
    for s in steps:
        ids.append(s["id"])
        for key in ("then", "else", "on_timeout"):
            ids += _all_ids(s.get(key) or [])
        for branch in s.get("branches", []):
            ids += _all_ids(branch)
    return ids


def test_cli_graph_prints_a_mermaid_flowchart(tmp_path: Path) -> None:
    example = EXAMPLES / "onboarding.json"
    done = _cli(["wdl", "graph", str(example)], tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("flowchart TD\n")
    ids = _all_ids(json.loads(example.read_text())["steps"])
    assert len(ids) == 9
    for step_id in ids:
        assert f'"{step_id}: ' in text, step_id  # every node label starts with its step id
    assert '"start customer-onboarding@1.0.0"' in text
    assert "-->|yes|" in text and "-->|no|" in text and "-->|timeout|" in text


def test_mermaid_of_every_step_kind() -> None:
    wf = validate(make(
        post("a", "/a", compensation={"activity": "http_post"}),
        {"id": "ask", "kind": "agent", "type": "scorer", "actor_id": "x", "handler": "score"},
        {"id": "p", "kind": "parallel", "branches": [[post("b1", "/b")], [post("b2", "/b")]]},
        {"id": "c", "kind": "condition", "if": "a.status == \"200\"",
         "then": [{"id": "w", "kind": "wait", "event": "go", "timeout_s": 2,
                   "on_timeout": [post("late", "/late")]}]},
        {"id": "nap", "kind": "sleep", "seconds": 1.5},
    ))
    text = mermaid(wf)
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    for fragment in ('["a: http_post<br/>undo: http_post"]', '("ask: ask scorer.score")',
                     '("p: parallel")', '("p: join")', '["b1: http_post"]', '["b2: http_post"]',
                     "{\"c: a.status == '200'\"}", '{{"w: wait go (2.0s)"}}',
                     '["late: http_post"]', '(["nap: sleep 1.5s"])', '(["end"])'):
        assert fragment in text, fragment
    # every node is defined once and every edge joins defined nodes
    nodes = {m.group(1) for m in re.finditer(r"^    (n\d+)[\[({]", text, re.M)}
    edges = re.findall(r"^    (n\d+) -->(?:\|[^|]*\|)? (n\d+)$", text, re.M)
    assert len(nodes) == sum(1 for line in lines if re.match(r"    n\d+[\[({]", line))
    assert edges and all(a in nodes and b in nodes for a, b in edges)


# == execution ===================================================================================

def test_activity_with_interpolated_input_and_typed_output(executor: Executor, provider: Provider,
                                                           base: str, tmp_path: Path) -> None:
    wf = validate(make(
        post("charge", "/charge", {"amount": "{{ input.amount }}",
                                   "note": "order {{ input.order }} for {{ input.amount }} cents",
                                   "lines": "{{ input.lines }}", "vip": "{{ input.vip }}"},
             output="receipt"),
        post("ship", "/ship", {"status": "{{ receipt.status }}",
                               "charge": "{{ receipt.body.id }}",
                               "echoed": "{{ receipt.body.got.lines[1] }}",
                               "text": "status={{ receipt.status }}"}),
    ), known_activity=known_in(executor))
    lines = [{"sku": "tea", "qty": 2}, {"sku": "mug", "qty": 1}]
    run = execute(executor, tmp_path / "j.db", wf,
                  {"provider": base, "amount": 1250, "order": "o-1", "lines": lines, "vip": False},
                  instance="act-1")
    assert provider.paths() == ["/charge", "/ship"]
    assert provider.body("/charge") == {"amount": 1250, "note": "order o-1 for 1250 cents",
                                        "lines": lines, "vip": False}
    assert provider.body("/ship") == {"status": 200, "charge": "charge-1",
                                      "echoed": {"sku": "mug", "qty": 1}, "text": "status=200"}
    # the output variable is the activity's typed output; no `output` template: all variables
    out = run.output
    assert set(out) == {"receipt", "ship"}
    assert out["receipt"]["status"] == 200 and out["receipt"]["body"]["id"] == "charge-1"
    assert out["ship"]["body"]["got"]["status"] == 200
    # durable keys: actor:start_seq:step
    assert provider.keys() == ["workflow/act-1:start:0", "workflow/act-1:start:1"]
    assert provider.duplicates == 0
    assert run.state["status"] == "completed"
    assert run.state["workflow"] == "t@1.0.0"
    assert run.state["done"] == ["charge", "ship"]
    assert [e["op"] for e in run.events] == ["activity.done", "activity.done"]


def test_workflow_output_template(executor: Executor, provider: Provider, base: str,
                                  tmp_path: Path) -> None:
    wf = validate(make(
        post("c", "/c", {"n": "{{ input.items[1].qty }}"}),
        output={"charge": "{{ c.body.id }}", "summary": "charged {{ input.amount }} to "
                "{{ input.customer }} ({{ c.body.id }})", "items": "{{ input.items }}",
                "qty": "{{ input.items[1].qty }}", "status": "{{ c.status }}",
                "fixed": [1, None, True], "nested": {"ok": "{{ c.body.got.n }}"}},
    ))
    items = [{"qty": 1}, {"qty": 3}]
    run = execute(executor, tmp_path / "j.db", wf,
                  {"provider": base, "amount": 10, "customer": "Ada", "items": items},
                  instance="out-1")
    assert run.outcome == {"status": "completed", "output": {
        "charge": "c-1", "summary": "charged 10 to Ada (c-1)", "items": items, "qty": 3,
        "status": 200, "fixed": [1, None, True], "nested": {"ok": 3}}}
    assert run.state["output"] == run.outcome["output"]


def test_agent_step_asks_a_child_actor(executor: Executor, provider: Provider, base: str,
                                       tmp_path: Path) -> None:
    wf = validate(make(
        {"id": "screen", "kind": "agent", "type": "scorer", "actor_id": "cust-{{ input.customer }}",
         "handler": "score", "input": {"amount": "{{ input.amount }}"}, "output": "verdict",
         "timeout_s": 10},
        {"id": "route", "kind": "condition", "if": "verdict.risk == 'low'",
         "then": [post("approve", "/approve", {"by": "{{ verdict.actor }}"})],
         "else": [post("review", "/review")]},
        output={"verdict": "{{ verdict }}"},
    ))
    db = tmp_path / "j.db"
    run = execute(executor, db, wf, {"provider": base, "customer": "7", "amount": 50},
                  instance="agent-1", agents=(Scorer,))
    assert run.output == {"verdict": {"risk": "low", "amount": 50, "actor": "cust-7", "calls": 1}}
    assert provider.paths() == ["/approve"]
    assert provider.body("/approve") == {"by": "cust-7"}
    ops = [e["op"] for e in run.events]
    assert ops[:2] == ["ask.sent", "ask.reply"]

    # a second instance asks the same child again: its state carries over
    run2 = execute(executor, db, wf, {"provider": base, "customer": "7", "amount": 500},
                   instance="agent-2", agents=(Scorer,))
    assert run2.output["verdict"] == {"risk": "high", "amount": 500, "actor": "cust-7",
                                      "calls": 2}
    assert provider.paths() == ["/approve", "/review"]

    async def child_state() -> Any:
        journal = SqliteJournal(db)
        try:
            tail = await journal.read_tail("scorer/cust-7")
            return tail[0]["state"]
        finally:
            await journal.close()

    assert asyncio.run(child_state()) == {"calls": 2, "amounts": [50, 500]}


def test_agent_step_failure_fails_the_workflow(executor: Executor, provider: Provider, base: str,
                                               tmp_path: Path) -> None:
    wf = validate(make(
        post("a", "/a", compensation={"activity": "http_post",
                                      "input": {"url": "{{ input.provider }}/undo-a"}}),
        {"id": "screen", "kind": "agent", "type": "scorer", "actor_id": "x", "handler": "score",
         "input": {"no_amount": 1}},
    ))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="agent-bad",
                  agents=(Scorer,))
    assert run.outcome["status"] == "failed"
    assert run.outcome["error"]["type"] == "HandlerFailed"
    assert "scorer/x.score failed" in run.outcome["error"]["message"]
    assert provider.paths() == ["/a", "/undo-a"]


def test_parallel_branches_run_and_outputs_come_in_branch_order(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    wf = validate(make(
        {"id": "both", "kind": "parallel", "output": "results", "branches": [
            [{"id": "slow", "kind": "sleep", "seconds": 0.3}, post("a", "/a")],
            [post("b1", "/b1"), post("b2", "/b2", {"after": "{{ b1.body.id }}"})],
        ]},
        post("after", "/after", {"a": "{{ a.body.path }}", "b1": "{{ b1.body.path }}",
                                 "n": "{{ results[1].body.path }}"}),
    ))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="par-1")
    # branch 0 sleeps, so branch 1's effects come first; results keep the branch order
    assert provider.paths() == ["/b1", "/b2", "/a", "/after"]
    results = run.output["results"]
    assert [r["body"]["path"] for r in results] == ["/a", "/b2"]
    assert provider.body("/b2") == {"after": "b1-1"}
    assert provider.body("/after") == {"a": "/a", "b1": "/b1", "n": "/b2"}
    keys = provider.keys()
    assert len(set(keys)) == 4
    assert provider.key("/a").startswith("workflow/par-1:start:both.0/")
    assert provider.key("/b1").startswith("workflow/par-1:start:both.1/")
    assert provider.key("/b2").startswith("workflow/par-1:start:both.1/")
    assert set(run.state["done"]) == {"slow", "a", "b1", "b2", "both", "after"}


def test_a_failing_branch_stops_its_siblings(executor: Executor, provider: Provider, base: str,
                                             tmp_path: Path) -> None:
    def undo(path: str) -> dict[str, Any]:
        return {"activity": "http_post", "input": {"url": "{{ input.provider }}" + path}}

    provider.delays.update({"/fail/x": 0.1, "/slow": 0.4})
    wf = validate(make({"id": "par", "kind": "parallel", "branches": [
        [post("f", "/fail/x", retry={"max_attempts": 1})],
        [post("quick", "/quick", compensation=undo("/undo-quick")),
         post("slow", "/slow", compensation=undo("/undo-slow")),
         post("late", "/late")],
    ]}))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="par-fail",
                  linger=1.0)  # a long-lived runtime: it goes on after the outcome
    assert run.outcome["status"] == "failed"
    paths = provider.paths()
    assert "/late" not in paths, paths  # no new step after a sibling failed
    assert "/undo-quick" in paths
    if "/slow" in paths:
        assert "/undo-slow" in paths


def test_a_branch_output_that_reuses_a_variable_name(executor: Executor, provider: Provider,
                                                      base: str, tmp_path: Path) -> None:
    steps = [post("a", "/a", output="tok"),
             {"id": "par", "kind": "parallel", "branches": [[post("b", "/b", output="tok")],
                                                            [post("c", "/c")]]},
             post("d", "/d", {"tok": "{{ tok.body.path }}"})]
    sequential = validate(make(steps[0], steps[1]["branches"][0][0], steps[2]))
    execute(executor, tmp_path / "j.db", sequential, {"provider": base}, instance="shadow-seq")
    assert provider.body("/d") == {"tok": "/b"}  # in sequence the later step wins
    provider.reset()
    try:
        wf = validate(make(*steps))
    except errors.WorkflowInvalid:
        return  # refusing the reused name would be fine too
    execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="shadow-par")
    assert provider.body("/d") == {"tok": "/b"}


@pytest.mark.parametrize(("amount", "country", "taken", "skipped"), [
    (500, "DE", "/manual", "/auto"),
    (50, "DE", "/auto", "/manual"),
    (500, "US", "/auto", "/manual"),
])
def test_condition_then_and_else(executor: Executor, provider: Provider, base: str,
                                 tmp_path: Path, amount: int, country: str, taken: str,
                                 skipped: str) -> None:
    wf = validate(make(
        post("quote", "/quote", {"amount": "{{ input.amount }}"}),
        {"id": "big", "kind": "condition",
         "if": "quote.status == 200 and input.amount >= 100 and input.country in ['DE', 'FR'] "
               "and not input.vip",
         "then": [post("manual", "/manual"), post("manual2", "/manual2")],
         "else": [post("auto", "/auto")]},
        post("done", "/done"),
    ))
    run = execute(executor, tmp_path / "j.db", wf,
                  {"provider": base, "amount": amount, "country": country, "vip": False},
                  instance=f"cond-{amount}-{country}")
    expected = ["/quote", taken] + (["/manual2"] if taken == "/manual" else []) + ["/done"]
    assert provider.paths() == expected
    assert skipped not in provider.paths()
    assert "big" in run.state["done"]
    assert ("manual" in run.output) == (taken == "/manual")
    assert ("auto" in run.output) == (taken == "/auto")


def test_wait_for_an_event_sets_the_output_variable(executor: Executor, provider: Provider,
                                                    base: str, tmp_path: Path) -> None:
    wf = validate(make(
        post("request", "/request"),
        {"id": "approval", "kind": "wait", "event": "approved", "timeout_s": 10,
         "output": "decision",
         "on_timeout": [post("reminder", "/reminder")]},
        post("after", "/after", {"by": "{{ decision.by }}", "all": "{{ decision }}"}),
    ))
    payload = {"by": "ada", "level": 2, "notes": ["ok"]}

    async def signal(rt: ActorRuntime, journal: SqliteJournal) -> None:
        await waiting(journal, "wait-1", "approved")
        assert provider.paths() == ["/request"]  # nothing after the wait yet
        await rt.signal("workflow/wait-1", "other", {"ignored": True})
        await rt.signal("workflow/wait-1", "approved", payload)

    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="wait-1",
                  during=signal)
    assert run.output["decision"] == payload
    assert provider.paths() == ["/request", "/after"]
    assert provider.body("/after") == {"by": "ada", "all": payload}
    assert [e["op"] for e in run.events] == ["activity.done", "wait.start", "wait.event",
                                             "activity.done"]


def test_wait_timeout_runs_the_on_timeout_steps(executor: Executor, provider: Provider,
                                                base: str, tmp_path: Path) -> None:
    wf = validate(make(
        post("request", "/request"),
        {"id": "approval", "kind": "wait", "event": "approved", "timeout_s": 0.3,
         "on_timeout": [post("reminder", "/reminder", {"about": "{{ request.body.id }}"}),
                        post("escalate", "/escalate")]},
        post("after", "/after", {"approval": "{{ approval }}",
                                 "reminded": "{{ reminder.body.id }}"}),
    ))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="timeout-1")
    assert provider.paths() == ["/request", "/reminder", "/escalate", "/after"]
    assert provider.body("/reminder") == {"about": "request-1"}
    assert provider.body("/after") == {"approval": None, "reminded": "reminder-2"}
    assert run.output["approval"] is None
    assert run.elapsed >= 0.3
    assert "wait.timeout" in [e["op"] for e in run.events]
    assert run.state["done"] == ["request", "reminder", "escalate", "approval", "after"]


def test_wait_timeout_without_on_timeout_fails_and_compensates(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    wf = validate(make(
        post("book", "/book", compensation={"activity": "http_post", "input": {
            "url": "{{ input.provider }}/unbook", "body": {"booking": "{{ book.body.id }}"}}}),
        {"id": "approval", "kind": "wait", "event": "approved", "timeout_s": 0.2},
        post("after", "/after"),
    ))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="timeout-2")
    assert run.outcome["status"] == "failed"
    assert run.outcome["error"]["type"] == "EventTimeout"
    assert run.outcome["error"]["compensated"] == ["http_post"]
    assert provider.paths() == ["/book", "/unbook"]
    assert provider.body("/unbook") == {"booking": "book-1"}
    assert run.state["status"] == "failed"


def test_sleep_is_a_durable_timer(executor: Executor, provider: Provider, base: str,
                                  tmp_path: Path) -> None:
    wf = validate(make(post("a", "/a"), {"id": "nap", "kind": "sleep", "seconds": 0.4},
                       post("b", "/b"), {"id": "zero", "kind": "sleep", "seconds": 0}))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="sleep-1")
    assert run.outcome["status"] == "completed"
    assert provider.paths() == ["/a", "/b"]
    assert run.elapsed >= 0.4
    ops = [e["op"] for e in run.events]
    assert ops == ["activity.done", "timer.start", "timer.fired", "activity.done",
                   "timer.start", "timer.fired"]
    starts = [e for e in run.events if e["op"] == "timer.start"]
    assert starts[0]["fire_at"] - run.commits[0]["run"]["ts"] >= 0.4
    assert set(run.output) == {"a", "b"}  # no template: the variables; a sleep sets none


def test_compensations_run_in_reverse_order_with_their_own_keys(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    def booked(n: int) -> dict[str, Any]:
        return post(f"s{n}", f"/book/{n}", {"n": n}, compensation={
            "activity": "http_post",
            "input": {"url": "{{ input.provider }}/cancel/" + str(n),
                      "body": {"booking": "{{ s" + str(n) + ".body.id }}"}}})

    wf = validate(make(booked(1), booked(2), booked(3),
                       post("boom", "/fail/pay", retry={"max_attempts": 1}),
                       post("never", "/never")))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="saga-1")
    outcome = run.outcome
    assert outcome["status"] == "failed"
    assert outcome["error"]["type"] == "ActivityFailed"
    assert "http_post failed after 1 attempt(s)" in outcome["error"]["message"]
    assert outcome["error"]["compensated"] == ["http_post"] * 3
    assert provider.paths() == ["/book/1", "/book/2", "/book/3",
                                "/cancel/3", "/cancel/2", "/cancel/1"]
    assert provider.refused == 1 and provider.duplicates == 0
    for n in (1, 2, 3):
        assert provider.body(f"/cancel/{n}") == {"booking": f"book-{n}-{n}"}
    originals = [provider.key(f"/book/{n}") for n in (1, 2, 3)]
    comps = [provider.key(f"/cancel/{n}") for n in (1, 2, 3)]
    assert all(":comp:" in k for k in comps)
    assert not any(":comp:" in k for k in originals)
    assert len(set(originals + comps)) == 6
    assert all(k.startswith("workflow/saga-1:start:") for k in originals + comps)
    assert run.state["status"] == "failed"
    assert run.state["done"] == ["s1", "s2", "s3"]
    assert [e["op"] for e in run.events] == ["activity.done"] * 3 + ["activity.failed"] + [
        "compensation.done"] * 3


def test_no_compensation_when_the_workflow_succeeds(executor: Executor, provider: Provider,
                                                    base: str, tmp_path: Path) -> None:
    wf = load(EXAMPLES / "shipping_saga.json", known_activity=known_in(executor))
    ok = execute(executor, tmp_path / "j.db", wf,
                 {"provider": base, "order": "o1", "address": "1 Loom Lane"}, instance="ship-ok")
    assert ok.output == {"leg_a": "carrier-a-book-1", "leg_b": "carrier-b-book-2"}
    assert provider.paths() == ["/carrier-a/book", "/carrier-b/book"]
    provider.reset()
    bad = execute(executor, tmp_path / "j.db", wf,
                  {"provider": base, "order": "o2", "address": "nowhere"}, instance="ship-bad")
    assert bad.outcome["status"] == "failed"
    assert provider.paths() == ["/carrier-a/book", "/carrier-a/cancel"]
    assert provider.body("/carrier-a/cancel") == {"order": "o2", "booking": "carrier-a-book-1"}


def test_compensations_of_parallel_branches_and_nested_steps(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    def undo(path: str) -> dict[str, Any]:
        return {"activity": "http_post", "input": {"url": "{{ input.provider }}" + path}}

    wf = validate(make(
        post("first", "/first", compensation=undo("/undo/first")),
        {"id": "c", "kind": "condition", "if": "true",
         "then": [post("inner", "/inner", compensation=undo("/undo/inner"))]},
        post("boom", "/fail/x", retry={"max_attempts": 1}),
    ))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="saga-2")
    assert run.outcome["status"] == "failed"
    assert provider.paths() == ["/first", "/inner", "/undo/inner", "/undo/first"]


def test_the_onboarding_example_happy_path(executor: Executor, provider: Provider, base: str,
                                           tmp_path: Path) -> None:
    wf = load(EXAMPLES / "onboarding.json", known_activity=known_in(executor))
    screener = actor_classes(load_module(str(EXAMPLES / "screener.py")))
    provider.extra["/screening"] = {"risk": "medium"}

    async def verify(rt: ActorRuntime, journal: SqliteJournal) -> None:
        await waiting(journal, "onb-1", "email_verified")
        await rt.signal("workflow/onb-1", "email_verified", {"at": "now"})

    run = execute(executor, tmp_path / "j.db", wf,
                  {"provider": base, "email": "ada@example.com", "plan": "pro"},
                  instance="onb-1", agents=tuple(screener), during=verify)
    assert run.output == {"account": "accounts-1", "risk": "medium", "verified": {"at": "now"}}
    paths = provider.paths()
    assert paths[:2] == ["/accounts", "/screening"]
    assert sorted(paths[2:]) == ["/notify/email", "/notify/slack"]
    assert provider.body("/notify/slack") == {"text": "new pro customer ada@example.com"}


def test_the_onboarding_example_rejected_path(executor: Executor, provider: Provider, base: str,
                                              tmp_path: Path) -> None:
    wf = load(EXAMPLES / "onboarding.json", known_activity=known_in(executor))
    screener = actor_classes(load_module(str(EXAMPLES / "screener.py")))
    provider.extra["/screening"] = {"risk": "high"}
    run = execute(executor, tmp_path / "j.db", wf,
                  {"provider": base, "email": "eve@example.com", "plan": "free"},
                  instance="onb-2", agents=tuple(screener))
    assert provider.paths() == ["/accounts", "/screening", "/accounts/close"]
    assert run.outcome["status"] == "completed", run.outcome
    assert run.output["risk"] == "high"


def test_a_missing_input_path_at_run_time_fails_the_workflow(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    wf = validate(make(
        post("a", "/a", compensation={"activity": "http_post",
                                      "input": {"url": "{{ input.provider }}/undo"}}),
        post("b", "/b", {"x": "{{ input.not_given.deep }}"}),
    ))
    run = execute(executor, tmp_path / "j.db", wf, {"provider": base}, instance="missing-1")
    assert run.outcome["status"] == "failed"
    assert run.outcome["error"]["type"] == "ExpressionError"
    assert "input.not_given does not exist" in run.outcome["error"]["message"]
    assert provider.paths() == ["/a", "/undo"]


def test_the_start_message_carries_the_definition(base: str) -> None:
    wf = load(FIXTURES / "versioned_v1.json")
    message = start_message(wf, {"provider": base})
    assert message["workflow"]["version"] == "1.0.0"
    assert Workflow.model_validate(message["workflow"]) == wf  # round trip, aliases included
    cond = validate(make({"id": "c", "kind": "condition", "if": "true", "else": []}))
    assert start_message(cond, None)["workflow"]["steps"][0]["if"] == "true"


# == versioning ==================================================================================

def test_a_running_instance_keeps_its_version_across_a_restart(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    v1 = load(FIXTURES / "versioned_v1.json", known_activity=known_in(executor))
    v2 = load(FIXTURES / "versioned_v2.json", known_activity=known_in(executor))
    assert (v1.name, v2.name) == ("versioned", "versioned")
    db = tmp_path / "j.db"

    async def first_process() -> None:
        journal = SqliteJournal(db)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01)
        await rt.start()
        rt.register(WorkflowActor)
        task = asyncio.ensure_future(run_workflow(rt, v1, {"provider": base}, instance="ver-1"))
        await waiting(journal, "ver-1", "go")
        await rt.stop()  # the process goes away while the instance waits
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()

    async def second_process() -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
        journal = SqliteJournal(db)
        try:
            async with ActorRuntime(journal, executor, poll_interval_s=0.01) as rt:
                rt.register(WorkflowActor)
                # a new instance starts on 2.0.0 meanwhile
                fresh = asyncio.ensure_future(
                    run_workflow(rt, v2, {"provider": base}, instance="ver-2", timeout=20))
                await waiting(journal, "ver-2", "go")
                # the old instance is "started again" with v2: same message id, so nothing new
                resumed = asyncio.ensure_future(
                    run_workflow(rt, v2, {"provider": base}, instance="ver-1", timeout=20))
                await rt.signal("workflow/ver-1", "go", {"ok": 1})
                outcome = await resumed
                await rt.signal("workflow/ver-2", "go", {"ok": 2})
                fresh_outcome = await fresh
                state = await rt.state_of("workflow/ver-1")
                commits = await journal.read("workflow/ver-1")
                assert fresh_outcome["output"] == {"version": "2.0.0", "last": "/v2/last"}
                return outcome, state, commits
        finally:
            await journal.close()

    asyncio.run(asyncio.wait_for(first_process(), 20))
    assert provider.paths() == ["/v1/first"]
    outcome, state, commits = asyncio.run(asyncio.wait_for(second_process(), 20))
    assert outcome == {"status": "completed", "output": {"version": "1.0.0", "last": "/v1/last"}}
    assert state["workflow"] == "versioned@1.0.0"
    assert state["done"] == ["first", "go", "last"]
    assert provider.body("/v1/last") == {"v": 1, "go": {"ok": 1}}
    # ver-1 never ran a 2.0.0 step; ver-2 ran all of them
    assert provider.paths() == ["/v1/first", "/v2/first", "/v1/last", "/v2/audit", "/v2/last"]
    assert provider.duplicates == 0
    starts = [c["message"] for c in commits if "message" in c]
    assert len(starts) == 1 and starts[0]["payload"]["workflow"]["version"] == "1.0.0"


# == crash and resume ============================================================================


def test_restart_mid_parallel_resumes_each_branch_once(executor: Executor, provider: Provider,
                                                        base: str, tmp_path: Path) -> None:
    wf = validate(make(
        post("start", "/start"),
        {"id": "par", "kind": "parallel", "output": "results", "branches": [
            [post("a1", "/a1"), {"id": "ea", "kind": "wait", "event": "a", "timeout_s": 20},
             post("a2", "/a2", {"got": "{{ ea }}"})],
            [post("b1", "/b1"), {"id": "eb", "kind": "wait", "event": "b", "timeout_s": 20},
             post("b2", "/b2", {"got": "{{ eb }}"})],
        ]},
        post("end", "/end", {"n": "{{ results[0].body.got }}"}),
    ))
    db = tmp_path / "j.db"
    # b1 ends well after a1, so the branches never commit at the same moment (see
    # test_concurrent_branches_journal_every_step for what happens when they do)
    provider.delays["/b1"] = 0.3

    async def before_restart() -> None:
        journal = SqliteJournal(db)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01)
        await rt.start()
        task = asyncio.ensure_future(run_workflow(rt, wf, {"provider": base}, instance="pr"))
        await waiting(journal, "pr", "a")
        await waiting(journal, "pr", "b")
        await rt.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()

    asyncio.run(asyncio.wait_for(before_restart(), 20))
    assert sorted(provider.paths()) == ["/a1", "/b1", "/start"]

    async def resume(rt: ActorRuntime, journal: SqliteJournal) -> None:
        await rt.signal("workflow/pr", "b", {"v": "b"})
        await asyncio.to_thread(provider.wait_for, "/b2")
        await rt.signal("workflow/pr", "a", {"v": "a"})

    run = execute(executor, db, wf, {"provider": base}, instance="pr", during=resume)
    assert run.outcome["status"] == "completed", run.outcome
    assert sorted(provider.paths()) == ["/a1", "/a2", "/b1", "/b2", "/end", "/start"]
    assert provider.paths()[-1] == "/end"
    assert provider.body("/a2") == {"got": {"v": "a"}}
    assert provider.body("/b2") == {"got": {"v": "b"}}
    assert provider.body("/end") == {"n": {"got": {"v": "a"}}}
    assert provider.duplicates == 0
    assert len(set(provider.keys())) == 6


def test_crash_during_compensation_resumes_it_exactly_once(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    def booked(n: int) -> dict[str, Any]:
        return post(f"s{n}", f"/book/{n}", compensation={
            "activity": "http_post", "input": {"url": "{{ input.provider }}/cancel/" + str(n)}})

    wf = validate(make(booked(1), booked(2), booked(3),
                       post("boom", "/fail/pay", retry={"max_attempts": 1})))
    db = tmp_path / "j.db"
    seen = [0]

    def crash(actor: str) -> None:  # the 5th activity to finish is the 2nd compensation
        if actor == "workflow/cc":
            seen[0] += 1
            if seen[0] == 5:
                raise asyncio.CancelledError  # ran, not committed: as if the process died

    async def crashing() -> None:
        journal = SqliteJournal(db)
        hooks = Hooks()
        hooks.on("after_activity", crash)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01, hooks=hooks)
        await rt.start()
        task = asyncio.ensure_future(run_workflow(rt, wf, {"provider": base}, instance="cc"))
        await until(lambda: _now(seen[0] == 5), what="the crash")
        await rt.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()

    asyncio.run(asyncio.wait_for(crashing(), 20))
    assert provider.paths() == ["/book/1", "/book/2", "/book/3", "/cancel/3", "/cancel/2"]
    run = execute(executor, db, wf, {"provider": base}, instance="cc")
    assert run.outcome["status"] == "failed"
    assert run.outcome["error"]["compensated"] == ["http_post"] * 3
    assert provider.paths() == ["/book/1", "/book/2", "/book/3",
                                "/cancel/3", "/cancel/2", "/cancel/1"]
    assert provider.duplicates == 1  # /cancel/2 was sent again with its key, performed once
    assert provider.refused == 1     # the failed step is not re-run: its failure is durable
    assert ":comp:" in provider.key("/cancel/2")


async def _now(value: bool) -> bool:
    return value


def test_concurrent_branches_journal_every_step(executor: Executor, provider: Provider,
                                                base: str, tmp_path: Path) -> None:
    wf = validate(make({"id": "par", "kind": "parallel", "branches": [
        [{"id": "ea", "kind": "wait", "event": "a", "timeout_s": 20}, post("a2", "/a2")],
        [{"id": "eb", "kind": "wait", "event": "b", "timeout_s": 20}, post("b2", "/b2")],
    ]}))
    db = tmp_path / "j.db"

    async def before_restart() -> list[tuple[str, str]]:
        journal = SqliteJournal(db)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01)
        rt.register(WorkflowActor)
        await rt.start()
        task = asyncio.ensure_future(run_workflow(rt, wf, {"provider": base}, instance="cb"))

        async def both_waiting() -> bool:
            act = rt.activations.get("workflow/cb")
            run = act.run if act is not None else None
            return run is not None and sum(w.op == "wait.event" for w in run.waits) == 2

        await until(both_waiting, what="both branches waiting")
        await asyncio.sleep(0.1)  # every commit written
        journaled = [(e["op"], e["name"]) for e in await events_of(journal, "workflow/cb")]
        await rt.signal("workflow/cb", "b", {"v": "b"})
        await asyncio.to_thread(provider.wait_for, "/b2")
        await rt.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()
        return journaled

    journaled = asyncio.run(asyncio.wait_for(before_restart(), 20))

    async def resume(rt: ActorRuntime, journal: SqliteJournal) -> None:
        await rt.signal("workflow/cb", "a", {"v": "a"})

    run = execute(executor, db, wf, {"provider": base}, instance="cb", during=resume)
    assert run.outcome["status"] == "completed", run.outcome
    assert sorted(provider.paths()) == ["/a2", "/b2"]
    assert sorted(journaled) == [("wait.start", "a"), ("wait.start", "b")]


def test_a_replay_divergence_breaks_the_instance_instead_of_compensating(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    from wdl_fixtures.changed_engine import ChangedWorkflow

    wf = validate(make(
        post("one", "/one", compensation={"activity": "http_post",
                                          "input": {"url": "{{ input.provider }}/undo-one"}}),
        {"id": "go", "kind": "wait", "event": "go", "timeout_s": 20},
        post("two", "/two"),
    ))
    db = tmp_path / "j.db"

    async def first() -> None:
        journal = SqliteJournal(db)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01)
        rt.register(WorkflowActor)
        await rt.start()
        task = asyncio.ensure_future(run_workflow(rt, wf, {"provider": base}, instance="dv"))
        await waiting(journal, "dv", "go")
        await rt.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()

    async def changed() -> Any:
        journal = SqliteJournal(db)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01)
        rt.register(ChangedWorkflow)  # a new deployment whose code diverges from the journal
        try:
            async with rt:
                return await run_workflow(rt, wf, {"provider": base}, instance="dv", timeout=10)
        finally:
            await journal.close()

    asyncio.run(asyncio.wait_for(first(), 20))
    assert provider.paths() == ["/one"]
    try:
        outcome = asyncio.run(asyncio.wait_for(changed(), 20))
    except errors.NonDeterminismError:
        outcome = "broken"
    assert provider.paths() == ["/one"]  # no compensation ran because of a divergence
    assert outcome == "broken"

def test_sigkill_mid_effect_then_resume_performs_every_effect_once(
        provider: Provider, base: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with Executor(load_settings(home=home)) as ex:
        upload_activities(ex, int(base.rsplit(":", 1)[1]))
    env = {**os.environ, "LOOM_HOME": str(home)}
    env.pop("LOOM_CRASH_AT", None)
    workflow = str(FIXTURES / "crash_resume.json")
    run_cmd = [*LOOM, "wdl", "run", workflow, "--instance", "crash-1",
               "--input", json.dumps({"provider": base, "order": "o-9"})]
    gate = provider.hold("/charge")  # the charge happens, its reply never reaches process 1

    first = subprocess.Popen(run_cmd, env=env, cwd=home, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        provider.wait_for("/charge")
        assert provider.paths() == ["/reserve", "/charge"]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        gate.set()
    assert first.returncode == -signal.SIGKILL
    assert "running crash-resume@1.0.0 as workflow/crash-1" in (first.stdout.read()
                                                                 if first.stdout else "")

    second = subprocess.Popen(run_cmd, env=env, cwd=home, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        # process 2 replays reserve, re-sends the charge with the same key, then waits
        deadline = time.monotonic() + 20
        while provider.duplicates < 1:
            assert second.poll() is None, second.communicate()
            assert time.monotonic() < deadline, "the charge was never retried"
            time.sleep(0.02)
        sent = subprocess.run([*LOOM, "wdl", "send-event", "crash-1", "go", '{"by": "ops"}'],
                              env=env, cwd=home, capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("queued ")
        out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    result = json.loads(out[out.index("{"):])
    assert result == {"status": "completed", "output": {
        "reservation": "reserve-1", "charge": "charge-2", "shipment": "ship-3",
        "approved_by": "ops"}}
    # every real effect exactly once (the charge was requested twice, performed once)
    assert provider.paths() == ["/reserve", "/charge", "/ship"]
    assert provider.duplicates == 1
    assert provider.requests == 4
    assert provider.body("/ship") == {"order": "o-9", "by": "ops"}
    assert provider.key("/charge") == "workflow/crash-1:start:1"

    # resuming a finished instance again changes nothing and reports the same outcome
    again = subprocess.run(run_cmd, env=env, cwd=home, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout[again.stdout.index("{"):]) == result
    assert provider.paths() == ["/reserve", "/charge", "/ship"]


# == the JSON Schema =============================================================================

def _schema_errors(schema: Any, value: Any, root: dict[str, Any], where: str = "") -> list[str]:
    """A small JSON Schema checker for the keywords workflow.schema.json uses (jsonschema is
    not a dependency)."""
    if schema is True or schema == {}:
        return []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _schema_errors(target, value, root, where)
    found: list[str] = []
    types = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}
    if "type" in schema:
        t = schema["type"]
        if t == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, types[t])
        if not ok:
            return [f"{where}: not {t}"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: not in enum")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{where}: does not match {schema['pattern']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        found.append(f"{where}: too short")
    if "minItems" in schema and len(value) < schema["minItems"]:
        found.append(f"{where}: too few items")
    for key, test in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                      ("exclusiveMinimum", lambda v, b: v > b)):
        if key in schema and not test(value, schema[key]):
            found.append(f"{where}: {key}")
    if "anyOf" in schema and all(_schema_errors(s, value, root, where) for s in schema["anyOf"]):
        found.append(f"{where}: matches no anyOf")
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not _schema_errors(s, value, root, where)]
        if len(matching) != 1:
            found.append(f"{where}: matches {len(matching)} of oneOf")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        found += [f"{where}/{k}: required" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                found += _schema_errors(props[k], v, root, f"{where}/{k}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{where}/{k}: not allowed")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            found += _schema_errors(schema["items"], v, root, f"{where}/{i}")
    return found


def _example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.json")) + sorted(FIXTURES.glob("*.json"))


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.name)
def test_the_json_schema_validates_the_examples(path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    doc = json.loads(path.read_text())
    try:
        import jsonschema  # type: ignore[import-not-found]
    except ImportError:
        problems = _schema_errors(schema, doc, schema)
    else:  # pragma: no cover - only when installed
        validator = jsonschema.Draft202012Validator(schema)
        problems = [e.message for e in validator.iter_errors(doc)]
    assert problems == []
    if path.name != "invalid_many.json":  # that one is semantically invalid on purpose
        assert load(path).ref == f"{doc['name']}@{doc['version']}"


def test_the_json_schema_refuses_bad_documents() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    good = json.loads((EXAMPLES / "shipping_saga.json").read_text())
    assert _schema_errors(schema, good, schema) == []
    bad_kind = json.loads(json.dumps(good))
    bad_kind["steps"][0]["kind"] = "teleport"
    extra = json.loads(json.dumps(good))
    extra["steps"][1]["colour"] = "red"
    no_steps = {**good, "steps": []}
    for doc in (bad_kind, extra, no_steps, {**good, "colour": 1}, {"name": "x"}):
        assert _schema_errors(schema, doc, schema)


def test_the_json_schema_file_is_up_to_date() -> None:
    from schemas.export import render

    assert render()["workflow.schema.json"] == SCHEMA_FILE.read_text()


def test_parallel_compensations_run_in_branch_order_whatever_finished_first(
        executor: Executor, provider: Provider, base: str, tmp_path: Path) -> None:
    """Branch 1 finishes before branch 0; a later step fails. Compensations run in reverse
    branch index (then reverse step), not in finish order, and a crash in the middle of
    compensating resumes by replay without a non-determinism error."""
    def undo(path: str) -> dict[str, Any]:
        return {"activity": "http_post", "input": {"url": "{{ input.provider }}" + path}}

    wf = validate(make(
        {"id": "par", "kind": "parallel", "branches": [
            [post("a", "/a", compensation=undo("/undo/a"))],
            [post("b", "/b", compensation=undo("/undo/b"))],
        ]},
        post("boom", "/fail/x", retry={"max_attempts": 1}),
    ))
    provider.delays["/a"] = 0.3  # branch 0 finishes last
    db = tmp_path / "j.db"
    seen = [0]

    def crash(actor: str) -> None:  # successes: /b, /a, /undo/b (3rd): crash there
        if actor == "workflow/pc":
            seen[0] += 1
            if seen[0] == 3:
                raise asyncio.CancelledError

    async def crashing() -> None:
        journal = SqliteJournal(db)
        hooks = Hooks()
        hooks.on("after_activity", crash)
        rt = ActorRuntime(journal, executor, poll_interval_s=0.01, hooks=hooks)
        await rt.start()
        task = asyncio.ensure_future(run_workflow(rt, wf, {"provider": base}, instance="pc"))
        await until(lambda: _now(seen[0] == 3), what="the crash")
        await rt.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()

    asyncio.run(asyncio.wait_for(crashing(), 20))
    assert provider.paths() == ["/b", "/a", "/undo/b"]
    run = execute(executor, db, wf, {"provider": base}, instance="pc")
    assert run.outcome["status"] == "failed", run.outcome
    assert provider.paths() == ["/b", "/a", "/undo/b", "/undo/a"]
    assert run.state["status"] == "failed"
