"""The service's hardening against one tenant reaching another's activities and actors,
poison (deeply nested) payloads, schedules failing together, and unbounded caches."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from service_harness import free_port, upload

from runtime import errors
from runtime.journal.memory import MemoryJournal
from runtime.service import Service, ServiceConfig, create_app, create_key
from runtime.service.cron import Scheduler
from runtime.service.keys import KeyRing
from runtime.service.metrics import Metrics
from runtime.service.store import Schedule, ServiceStore
from runtime.settings import load_settings

pytestmark = pytest.mark.timeout(60)
JSON = {"content-type": "application/json"}


def nest(depth: int) -> bytes:
    """`depth` lists, one inside the other, around a 1."""
    return b"[" * depth + b"1" + b"]" * depth


class Served(SimpleNamespace):
    url: str
    svc: Service
    keys: dict[str, str]

    def client(self, tenant: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One in-process service (uvicorn in a thread) with tenants acme and evil."""
    home: Path = tmp_path_factory.mktemp("hardening")
    svc = Service(load_settings(home=home), ServiceConfig(),
                  modules=["tests/service_actors.py"])
    keys = {t: create_key(svc.store, t, ["read", "invoke", "write"])[0]
            for t in ("acme", "evil")}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    yield Served(url=f"http://127.0.0.1:{port}", svc=svc, keys=keys)
    server.should_exit = True
    thread.join(30)


def _settled(c: httpx.Client, instance: str, within: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        r = c.get(f"/v1/workflows/{instance}")
        body = r.json() if r.status_code == 200 else {}
        if body.get("status") not in (None, "queued", "running"):
            return body
        assert time.monotonic() < deadline, f"workflow {instance} still {r.text[:200]}"
        time.sleep(0.05)


@pytest.mark.integration
def test_a_workflow_cannot_name_another_tenants_activity(served: Served) -> None:
    acme, evil = served.client("acme"), served.client("evil")
    assert upload(acme, "echo", "xt-echo").status_code == 201
    wf = {"name": "steal", "version": "1.0.0", "steps": [
        {"id": "a", "kind": "activity", "activity": "acme--xt-echo", "input": {"x": 1}}]}
    r = evil.post("/v1/workflows", json={"workflow": wf, "instance": "steal-a"})
    assert r.status_code == 422, r.text  # acme's private name is not evil's to know
    assert r.json()["errors"][0]["pointer"] == "/steps/0/activity"
    # past validation (the start message sent straight to the instance) it fails at the step
    r = evil.post("/v1/actors/workflow/steal-b/send/start",
                  json={"payload": {"workflow": wf, "input": None}})
    assert r.status_code == 202, r.text
    body = _settled(evil, "steal-b")
    assert body["status"] == "failed", body
    assert "'evil--acme--xt-echo' is not registered" in body["error"]["message"], body
    assert acme.get("/v1/activities/xt-echo").json()["recent_calls"] == []


@pytest.mark.integration
def test_a_workflows_agent_steps_reach_only_its_tenants_actors(served: Served) -> None:
    acme, evil = served.client("acme"), served.client("evil")
    r = acme.post("/v1/actors/counter/xt-c1/ask/add", json={"payload": {"n": 41}})
    assert r.status_code == 200 and r.json()["result"] == 41, r.text
    wf = {"name": "poke", "version": "1.0.0", "steps": [
        {"id": "b", "kind": "agent", "type": "counter", "actor_id": "acme~xt-c1",
         "handler": "add", "input": {"n": 1000}}]}
    r = evil.post("/v1/workflows", json={"workflow": wf, "instance": "poke-1"})
    assert r.status_code == 202, r.text
    _settled(evil, "poke-1")  # it asked evil's own counter "acme~xt-c1", not acme's
    assert acme.get("/v1/actors/counter/xt-c1").json()["state"]["total"] == 41
    assert evil.get("/v1/actors/counter/acme~xt-c1").json()["state"]["total"] == 1000


def test_one_failing_schedule_does_not_stop_the_others(tmp_path: Path) -> None:
    now = [1_000_000.0]
    svc = SimpleNamespace(store=ServiceStore(tmp_path / "s.db"), journal=MemoryJournal(),
                          config=ServiceConfig(), metrics=Metrics(), runtime=None)
    sched = Scheduler(svc, clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        for tenant, cron in (("aaa", "not a cron"), ("acme", "@every 1s"),
                             ("zzz", "not a cron")):  # broken ones before and after
            svc.store.add_schedule(Schedule(tenant, "s", cron, "counter/x", "tick", None,
                                            "skip", now[0], now[0]))
        now[0] += 3.5
        assert asyncio.run(asyncio.wait_for(sched.fire_due(), 10)) == 1
        inbox = asyncio.run(svc.journal.inbox("counter/acme~x", float("inf")))
        assert [e["payload"]["scheduled_at"] for e in inbox] == [1_000_003.0]
    finally:
        svc.store.close()


def test_a_schedule_that_never_matches_moves_its_cursor_on(tmp_path: Path) -> None:
    """30 February never comes: its cursor, a year old, moves on without a tick, so the
    next passes do not scan the same year minute by minute again."""
    now = [2_000_000_000.0]
    svc = SimpleNamespace(store=ServiceStore(tmp_path / "s.db"), journal=MemoryJournal(),
                          config=ServiceConfig(), metrics=Metrics(), runtime=None)
    sched = Scheduler(svc, clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        old = now[0] - 365 * 86400
        svc.store.add_schedule(Schedule("acme", "never", "0 0 30 2 *", "counter/x", "tick",
                                        None, "catch-up", old, old))
        assert asyncio.run(sched.fire_due()) == 0
        (cursor,) = [s.cursor for s in svc.store.schedules()]
        assert now[0] - 60 < cursor <= now[0]
        assert asyncio.run(svc.journal.inbox("counter/acme~x", float("inf"))) == []
    finally:
        svc.store.close()


@pytest.mark.integration
def test_a_schedule_payload_nested_too_deep_is_refused(served: Served) -> None:
    acme = served.client("acme")

    def post(name: str, depth: int) -> httpx.Response:
        return acme.post("/v1/schedules", headers=JSON, content=(
            b'{"name":"%s","cron":"@every 1h","target":"counter/x","handler":"tick",'
            b'"payload":%s}' % (name.encode(), nest(depth))))

    r = post("deep", 129)
    assert r.status_code == 422 and r.json()["code"] == "request_invalid", r.text
    assert r.json()["errors"][0]["pointer"] == "/payload", r.text
    assert post("ok", 128).status_code == 201
    assert [s["name"] for s in acme.get("/v1/schedules").json()] == ["ok"]


@pytest.mark.integration
@pytest.mark.parametrize("verb", ["send", "ask", "signal"])
def test_actor_messages_nested_too_deep_are_refused(served: Served, verb: str) -> None:
    evil = served.client("evil")
    path = f"/v1/actors/counter/deep-{verb}/{verb}/add"
    extra = b'"timeout_s":3,' if verb == "ask" else b""
    r = evil.post(path, headers=JSON, content=b"{" + extra + b'"payload":' + nest(220) + b"}")
    assert r.status_code == 422, r.text  # (ask: input_invalid, from the runtime's own check)
    assert "nests deeper than 128" in r.json()["detail"], r.text
    r = evil.get(f"/v1/actors/counter/deep-{verb}")
    assert r.status_code in (200, 404), r.text  # not a poison message it cannot read


@pytest.mark.integration
def test_deep_trigger_bodies_and_huge_journal_cursors_are_client_errors(
        served: Served) -> None:
    acme = served.client("acme")
    r = acme.post("/v1/triggers/counter/deep/add", content=nest(100_000),
                  headers={**JSON, "Idempotency-Key": "deep-1"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json", r.text
    r = acme.get("/v1/actors/counter/deep/journal", params={"after_seq": 10**30})
    assert r.status_code == 422, r.text


def test_unknown_keys_are_not_cached(tmp_path: Path) -> None:
    store = ServiceStore(tmp_path / "s.db")
    try:
        full, _ = create_key(store, "acme", ["read"])
        ring = KeyRing(store)
        assert ring.check(full) is not None
        before = len(ring._cache)
        for _ in range(500):
            assert ring.check(f"loom_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") \
                is None
        assert len(ring._cache) == before
        assert ring.check(full) is not None
    finally:
        store.close()


@pytest.mark.integration
def test_an_activity_name_holding_the_tenant_separator_is_refused(served: Served) -> None:
    """`--` separates a tenant from its own names in the registry: a name holding it would
    be ambiguous with another tenant's private activity, so uploads refuse it."""
    r = upload(served.client("acme"), "echo", "img--resize")
    assert r.status_code == 422 and r.json()["code"] == "manifest_invalid", r.text
    assert "reserved" in r.json()["detail"]


@pytest.mark.parametrize("shape", ["tuple", "ordered"])
def test_nesting_hidden_in_a_tuple_or_a_mapping_subclass_is_refused(shape: str) -> None:
    """The runtime's own check (any caller of send, not only the API) looks through tuples
    at the top and through dict subclasses."""
    from collections import OrderedDict

    from runtime.actors import ActorRef, ActorRuntime

    inner: Any = 1
    for _ in range(220):
        inner = OrderedDict(k=inner) if shape == "ordered" else [inner]
    payload = (inner,) if shape == "tuple" else inner
    rt = ActorRuntime(MemoryJournal(), lint=False)
    with pytest.raises(errors.InputInvalid, match="nests deeper"):
        rt.envelope(ActorRef("counter", "acme~deep"), "add", payload)
    assert rt.envelope(ActorRef("counter", "ok"), "add", {"a": [1, (2, 3)]})["payload"]
