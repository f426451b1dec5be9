"""/metrics (prometheus-client) and OpenTelemetry spans (the SDK's in-memory exporter), with
the app served by a real uvicorn in this process so the exporter sees its spans; guests' HTTP
requests traced against the loopback HTTP server. Across processes: test_tracing_fleet.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from service_harness import ROOT, free_port, upload

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.executor import Executor, http_capability
from runtime.journal import MemoryJournal
from runtime.service import Service, ServiceConfig, create_app, create_key, tracing
from runtime.service.observe import ObservedJournal
from runtime.settings import load_settings
from schemas.manifest import HttpCapability

pytestmark = pytest.mark.integration
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's provider (installed here unless another test module did), reporting
    finished spans to EXPORTER; guests' HTTP requests traced (`tracing.install`)."""
    tracing.install(TracerProvider()).add_span_processor(SimpleSpanProcessor(EXPORTER))
    return EXPORTER


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           exporter: InMemorySpanExporter) -> Iterator[tuple[str, str]]:
    home: Path = tmp_path_factory.mktemp("obs")
    svc = Service(load_settings(home=home), ServiceConfig(),
                  modules=["tests/service_actors.py"])
    key, _ = create_key(svc.store, "acme", ["read", "invoke", "write"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(30)


def test_metrics(served: tuple[str, str]) -> None:
    url, key = served
    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
    assert upload(c, "echo").status_code == 201
    for _ in range(3):
        assert c.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
    assert c.post("/v1/actors/counter/m1/ask/echo", json={"payload": {}}).status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert 'loom_activity_invocations_total{activity="echo",code="",outcome="ok",' \
           'version="1.0.0"}' in text
    assert "loom_activity_duration_seconds_bucket" in text
    assert "loom_activity_memory_bytes_count" in text
    assert 'loom_instance_pool_calls_total{warm="true"}' in text
    assert 'loom_journal_commits_total{outcome="ok"}' in text
    assert "loom_journal_append_seconds_count" in text
    assert "loom_http_request_duration_seconds_count" in text
    assert "loom_leases_held" in text


def test_one_trace_from_request_to_activity(served: tuple[str, str]) -> None:
    url, key = served
    EXPORTER.clear()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = httpx.post(f"{url}/v1/actors/counter/t9/ask/echo", json={"payload": {"a": 1}},
                   headers={"Authorization": f"Bearer {key}", "traceparent": parent})
    assert r.status_code == 200, r.text
    spans: list[Any] = []
    for _ in range(100):
        spans = list(EXPORTER.get_finished_spans())
        if any(s.name.startswith("activity ") for s in spans):
            break
        time.sleep(0.05)
    names = {s.name for s in spans}
    assert "POST /v1/actors/{type}/{id}/ask/{handler}" in names
    assert "activity echo" in names and "actor turn counter" in names
    ours = [s for s in spans if s.name in ("activity echo", "actor turn counter")]
    assert {format(s.context.trace_id, "032x") for s in ours} == \
        {"0af7651916cd43dd8448eb211c80319c"}
    activity = next(s for s in spans if s.name == "activity echo")
    assert activity.attributes["loom.memory_bytes"] > 0


@pytest.fixture
def http_post(tmp_path: Path, http_server: Any) -> Iterator[Executor]:
    """The http_post sample activity, allowed to reach the loopback HTTP server."""
    build = ROOT / "activities" / "build"
    manifest = json.loads((build / "http_post.manifest.json").read_text())
    manifest["capabilities"]["http"] = {"allow": [
        {"scheme": "http", "host": "127.0.0.1", "port": _port(http_server)}],
        "allow_private": True}
    manifest.pop("sha256")
    with Executor(load_settings(home=tmp_path)) as ex:
        ex.upload((build / "http_post.wasm").read_bytes(), manifest)
        yield ex


def _port(http_server: Any) -> int:
    return int(http_server.base_url.rsplit(":", 1)[1])


def test_a_guests_http_request_is_a_span_that_carries_the_trace(
        exporter: InMemorySpanExporter, http_post: Executor, http_server: Any) -> None:
    exporter.clear()
    http_server.reset()
    with tracing.tracer().start_as_current_span("caller") as caller:
        out = http_post.invoke_sync("http_post", {"url": http_server.url("/echo")})
    assert out["status"] == 200
    [http] = [s for s in exporter.get_finished_spans() if s.name == "HTTP POST"]
    assert http.parent is not None and http.parent.span_id == caller.get_span_context().span_id
    assert http.attributes is not None and http.attributes["http.response.status_code"] == 200
    [request] = http_server.requests
    trace_id = format(caller.get_span_context().trace_id, "032x")
    version, sent_trace, sent_parent, _ = request.headers["traceparent"].split("-")
    assert (version, sent_trace, sent_parent) == \
        ("00", trace_id, format(http.context.span_id, "016x"))


def test_a_traceparent_the_guest_set_is_sent_as_it_is(exporter: InMemorySpanExporter,
                                                       http_server: Any) -> None:
    http_server.reset()
    cap = HttpCapability.model_validate({"allow": [
        {"scheme": "http", "host": "127.0.0.1", "port": _port(http_server)}],
        "allow_private": True})
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    with tracing.tracer().start_as_current_span("caller"):
        answer = http_capability.perform(
            {"method": "GET", "url": http_server.url("/hello"), "headers": {"TraceParent": own}},
            cap, idempotency_key=None, timeout_s=10)
    assert answer["ok"]
    [request] = http_server.requests
    assert request.headers["traceparent"] == own


def test_without_tracing_the_executor_adds_no_header(exporter: InMemorySpanExporter,
                                                     http_post: Executor, http_server: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_capability, "observer", None)
    exporter.clear()
    http_server.reset()
    with tracing.tracer().start_as_current_span("caller"):
        http_post.invoke_sync("http_post", {"url": http_server.url("/echo")})
    [request] = http_server.requests
    assert "traceparent" not in request.headers
    assert not [s for s in exporter.get_finished_spans() if s.name.startswith("HTTP ")]


class Parker(Actor, type_name="parker"):
    @handler
    async def wait(self, ctx: ActorContext, payload: Any) -> Any:
        return await ctx.wait_for_event("go")


def test_a_run_resumed_by_another_process_continues_its_trace(
        exporter: InMemorySpanExporter) -> None:
    """The second runtime (its own journal wrapper: another process) knows the run's trace
    only from the journal: the message the run started with."""
    journal = MemoryJournal()
    tp = "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01"

    async def scenario() -> None:
        first = ActorRuntime(ObservedJournal(journal), lint=False, poll_interval_s=0.01)
        first.register(Parker)
        await first.start()
        await journal.enqueue({"id": "m1", "target": "parker/p1", "kind": "call",
                               "handler": "wait", "payload": None, "deliver_at": 0.0,
                               "traceparent": tp})
        first.notify("parker/p1")
        while first.activations.get("parker/p1") is None or \
                not first.activations["parker/p1"].run or \
                not first.activations["parker/p1"].run.waits:
            await asyncio.sleep(0.01)
        await first.stop()
        second = ActorRuntime(ObservedJournal(journal), lint=False, poll_interval_s=0.01)
        second.register(Parker)
        async with second:
            await second.signal("parker/p1", "go", {"ok": True})
            while await journal.outcome("parker/p1", "m1") is None:
                await asyncio.sleep(0.01)

    exporter.clear()
    asyncio.run(scenario())
    turns = [s for s in exporter.get_finished_spans() if s.name == "actor turn parker"]
    assert turns and {(format(s.context.trace_id, "032x"), s.parent and s.parent.span_id)
                      for s in turns} == {("5b8aa5a2d2c872e8321cf37308d69df2",
                                           0x051581bf3cb55c13)}
    assert any(s.attributes and s.attributes["loom.kind"] == "completed" for s in turns)
