"""One trace across processes. `loom serve` takes an ask carrying a `traceparent`; one
`loom worker` runs the asking actor (tfront), another the asked one (tback), whose activity
makes an HTTP request to the loopback server. Each process exports its spans the standard
way (OTEL_EXPORTER_OTLP_ENDPOINT) to an OTLP/HTTP collector stub this test runs; together
they must form one trace with the right parents, and the HTTP request must carry it on.
The asked worker also writes JSON logs (LOOM_JSON_LOGS=1) carrying actor, seq, idempotency
key and trace id."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from service_harness import LOOM, ROOT, Server

from runtime.executor import Executor
from runtime.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.system]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"


class Collector:
    """OTLP/HTTP (protobuf) trace receiver on loopback: every span it is sent, flattened."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for rs in request.resource_spans:
                        service = next(a.value.string_value for a in rs.resource.attributes
                                       if a.key == "service.name")
                        for ss in rs.scope_spans:
                            spans.extend({
                                "service": service, "name": s.name, "trace": s.trace_id.hex(),
                                "id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                                "attributes": {a.key: a.value for a in s.attributes},
                            } for s in ss.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def _upload_http_post(home: Path, port: int) -> None:
    build = ROOT / "activities" / "build"
    manifest = json.loads((build / "http_post.manifest.json").read_text())
    manifest["capabilities"]["http"] = {
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}], "allow_private": True}
    manifest.pop("sha256")
    with Executor(load_settings(home=home)) as ex:
        ex.upload((build / "http_post.wasm").read_bytes(), manifest)


def _worker(home: Path, module: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    log = (home / f"{Path(module).stem}.log").open("wb")
    return subprocess.Popen([LOOM, "worker", "--module", module, "--poll", "0.02", *args],
                            cwd=ROOT, env={**os.environ, "LOOM_HOME": str(home), **env},
                            stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # a graceful stop flushes the batch span processor
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_an_ask_across_two_workers_is_one_trace(tmp_path: Path, collector: Collector,
                                                http_server: Any) -> None:
    http_server.reset()
    _upload_http_post(tmp_path, int(http_server.base_url.rsplit(":", 1)[1]))
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    server = Server(tmp_path, modules=(), env={**otel, "OTEL_SERVICE_NAME": "api"})
    workers = [
        _worker(tmp_path, "tests/tracing_actors/front.py",
                {**otel, "OTEL_SERVICE_NAME": "front"}),
        _worker(tmp_path, "tests/tracing_actors/back.py",
                {**otel, "OTEL_SERVICE_NAME": "back", "LOOM_JSON_LOGS": "1"},
                "--log-level", "debug"),
    ]
    try:
        key = server.key("acme", "read,invoke")
        with server.client(key) as c:
            r = c.post("/v1/actors/tfront/o1/ask/order",
                       json={"payload": {"url": http_server.url("/echo")}, "timeout_s": 60},
                       headers={"traceparent": f"00-{TRACE}-{CALLER}-01"})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["charged"]["status"] == 200
    finally:
        for proc in workers:
            _stop(proc)
        server.stop()
    spans = collector.spans
    by_id = {s["id"]: s for s in spans}

    def named(service: str, name: str) -> list[dict[str, Any]]:
        found = [s for s in spans if s["service"] == service and s["name"] == name]
        assert found, f"no {name!r} span from {service}: {sorted({s['name'] for s in spans})}"
        return found

    def ancestors(span: dict[str, Any]) -> list[str]:
        up = []
        while span["parent"] in by_id:
            span = by_id[span["parent"]]
            up.append(span["id"])
        return up

    # Everything the workers did is in the caller's trace: no span started a trace of its own.
    assert {s["trace"] for s in spans if s["service"] in ("front", "back")} == {TRACE}
    # FastAPI may add its own server and endpoint spans around ours: ours has the tenant.
    [request] = [s for s in named("api", "POST /v1/actors/{type}/{id}/ask/{handler}")
                 if "loom.tenant" in s["attributes"]]
    assert (request["trace"], request["parent"]) == (TRACE, CALLER)
    [enqueued] = named("api", "enqueue order")
    assert request["id"] in ancestors(enqueued)
    # The asking actor's turns continue the request; its ask leaves from one of them.
    front_turns = named("front", "actor turn tfront")
    assert {t["parent"] for t in front_turns} == {enqueued["parent"]}
    assert request["id"] in ancestors(front_turns[0])
    [ask] = named("front", "enqueue charge")
    asking_turn = by_id[ask["parent"]]
    assert asking_turn in front_turns
    # The asked actor, on the other worker, continues the asking turn ...
    back_turns = named("back", "actor turn tback")
    assert {t["parent"] for t in back_turns} == {asking_turn["id"]}
    [activity] = named("back", "activity http_post")
    assert activity["parent"] == asking_turn["id"]
    # ... its activity's HTTP request is a span inside the activity, sent with its context,
    [http] = named("back", "HTTP POST")
    assert http["parent"] == activity["id"]
    [sent] = [q for q in http_server.requests if q.path == "/echo"]
    assert sent.headers["traceparent"] == f"00-{TRACE}-{http['id']}-01"
    # ... and its reply leaves from its last turn, back to the asker.
    [reply] = [s for s in spans
               if s["service"] == "back" and s["name"].startswith("enqueue reply:")]
    assert by_id[reply["parent"]] in back_turns

    lines = [json.loads(line) for line in (tmp_path / "back.log").read_text().splitlines()
             if line.startswith("{")]
    guest = [d for d in lines if d["logger"] == "loom.activity.http_post"]
    assert guest and all(d["trace_id"] == TRACE and d["actor"] == "tback/pay" and
                         d["idempotency_key"].startswith("tback/pay:") for d in guest)
    turns = [d for d in lines if d["logger"] == "loom.turns"]
    assert sorted(d["seq"] for d in turns) == sorted(
        t["attributes"]["loom.seq"].int_value for t in back_turns)
    assert all(d["trace_id"] == TRACE and d["actor"] == "tback/pay" for d in turns)
