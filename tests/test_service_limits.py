"""Per-tenant limits at `loom serve` (real uvicorn, its own process): `LOOM_LIMITS` for API
invokes (429 with Retry-After, never a wait) and for the actors the server runs (they wait),
request quotas per tenant (`LOOM_SERVICE_QUOTAS`), in memory and shared through Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from servers import HttpTestServer, RecordedRequest, RedisServer, Response
from service_harness import ROOT, Server, upload

pytestmark = pytest.mark.integration

LIMITS = {"echo": {"tenants": {"slow": {"rate_per_s": 1, "burst": 1},
                               "*": {"rate_per_s": 0.001, "burst": 2}}},
          "http_fetch": {"tenants": {"*": {"concurrency": 1}}}}
QUOTAS = {"q": {"per_minute": 1, "burst": 3}}
ENV = {"LOOM_LIMITS": json.dumps(LIMITS), "LOOM_SERVICE_QUOTAS": json.dumps(QUOTAS)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("limits"), env=ENV)
    yield s
    s.stop()


def _tenant(server: Server, tenant: str) -> Any:
    c = server.client(server.key(tenant, "read,invoke,write"))
    assert upload(c, "echo").status_code == 201
    return c


def _refused(r: Any, code: str) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["type"] == f"/problems/{code}"
    assert body["retryable"] is True and body["retry_after_s"] >= 0
    return body


def test_api_invoke_over_the_tenant_rate_is_429_not_a_wait(server: Server) -> None:
    a, b = _tenant(server, "ta"), _tenant(server, "tb")
    for _ in range(2):  # the burst
        assert a.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
    body = _refused(a.post("/v1/activities/echo/invoke", json={"input": {}}), "rate_limited")
    assert body["activity"] == "echo" and body["limit"] == "rate" and body["scope"] == "tenant"
    assert int(a.post("/v1/activities/echo/invoke", json={"input": {}}).headers[
        "retry-after"]) > 100  # a token every 1000 s
    for _ in range(2):  # another tenant's limit is its own
        assert b.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
    metrics = server.client(None).get("/metrics").text
    assert 'loom_api_throttled_total{kind="activity"} 2.0' in metrics


def test_actor_calls_of_the_tenant_wait_for_its_limit(server: Server) -> None:
    slow = _tenant(server, "slow")
    before = time.time()
    assert slow.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
    # the token is gone for a second: the actor's call waits for the next one, it does not fail
    r = slow.post("/v1/actors/counter/w1/ask/echo", json={"payload": {"x": 1}})
    assert r.json()["outcome"] == "completed" and r.json()["result"] == {"x": 1}
    run = slow.get("/v1/runs", params={"type": "counter"}).json()["runs"][0]
    assert run["actor"] == "counter/w1" and run["status"] == "completed"
    assert run["ended"] >= before + 1.0 - 0.05  # not admitted before the next token


def test_a_concurrency_slot_is_held_until_the_call_ends(server: Server,
                                                        http_server: HttpTestServer) -> None:
    manifest = json.loads((ROOT / "activities/build/http_fetch.manifest.json").read_text())
    port = int(http_server.base_url.rsplit(":", 1)[1])
    manifest["capabilities"]["http"] = {"allow": [{"scheme": "http", "host": "127.0.0.1",
                                                   "port": port}], "allow_private": True}
    wasm = (ROOT / "activities/build/http_fetch.wasm").read_bytes()
    clients = []
    for tenant in ("hc", "hd"):
        c = server.client(server.key(tenant, "read,invoke,write"))
        assert c.post("/v1/activities", files={
            "wasm": ("a.wasm", wasm, "application/wasm"),
            "manifest": ("m.json", json.dumps(manifest).encode(), "application/json")}
        ).status_code == 201
        clients.append(c)
    c, d = clients
    go = threading.Event()

    def hold(_: RecordedRequest) -> Response:
        go.wait(30)
        return Response(200, "held")

    http_server.reset()
    http_server.route("GET", "/hold", hold)
    fetch = {"input": {"url": http_server.url("/fast")}}
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(c.post, "/v1/activities/http_fetch/invoke",
                           json={"input": {"url": http_server.url("/hold")}})
        while not any(r.path == "/hold" for r in http_server.requests):
            assert not held.done(), held.result().text
            time.sleep(0.01)
        body = _refused(c.post("/v1/activities/http_fetch/invoke", json=fetch), "rate_limited")
        assert body["limit"] == "concurrency"
        assert d.post("/v1/activities/http_fetch/invoke", json=fetch).status_code == 200
        go.set()
        assert held.result().status_code == 200
    assert c.post("/v1/activities/http_fetch/invoke", json=fetch).status_code == 200


def test_request_quota_per_tenant(server: Server) -> None:
    q = server.client(server.key("q", "read"))
    other = server.client(server.key("other", "read"))
    for _ in range(3):
        assert q.get("/v1/activities").status_code == 200
    body = _refused(q.get("/v1/runs"), "quota_exceeded")
    assert body["scope"] == "tenant" and int(q.get("/v1/activities").headers[
        "retry-after"]) >= 50  # one request a minute
    assert all(other.get("/v1/activities").status_code == 200 for _ in range(5))


def test_limits_and_quotas_are_shared_through_redis(
        tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> None:
    home = tmp_path_factory.mktemp("limits-redis")
    env = {**ENV, "LOOM_REDIS_URL": redis_server.url}
    one = Server(home, env=env)
    try:
        two = Server(home, env=env)
        try:
            key = one.key("rt", "read,invoke,write")
            c1, c2 = one.client(key), two.client(key)
            assert upload(c1, "echo").status_code == 201
            assert c1.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
            assert c2.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
            for c in (c1, c2):  # the tenant's burst of 2 is spent across both servers
                _refused(c.post("/v1/activities/echo/invoke", json={"input": {}}),
                         "rate_limited")
            qkey = one.key("q", "read")
            q1, q2 = one.client(qkey), two.client(qkey)
            assert [q.get("/v1/activities").status_code for q in (q1, q2, q1)] == [200] * 3
            _refused(q2.get("/v1/activities"), "quota_exceeded")
            import redis

            r = redis.Redis.from_url(redis_server.url)
            assert r.exists("loom:limit:{echo}:t:rt:rate")
            assert r.exists("loom:quota:{api-requests}:t:q:rate")
        finally:
            two.stop()
    finally:
        one.stop()


def test_a_bad_quota_setting_names_the_field() -> None:
    from runtime import errors
    from runtime.service.admission import parse_quotas

    assert parse_quotas("") is None
    with pytest.raises(errors.SettingsInvalid, match=r"LOOM_SERVICE_QUOTAS: acme\.per_minute"):
        parse_quotas('{"acme": {"per_minute": 0}}')
    with pytest.raises(errors.SettingsInvalid, match=r"acme\.burts: Extra inputs"):
        parse_quotas('{"acme": {"per_minute": 5, "burts": 1}}')
