"""/metrics (prometheus-client) and OpenTelemetry spans (the SDK's in-memory exporter), with
the app served by a real uvicorn in this process so the exporter sees its spans."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from service_harness import free_port, upload

from runtime.service import Service, ServiceConfig, create_app, create_key
from runtime.settings import load_settings

pytestmark = pytest.mark.integration
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
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
