"""`loom serve` over real HTTP (uvicorn on loopback, its own process): tenants and keys,
scopes, problem documents, activities, actors, workflows, dead letters, OpenAPI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_harness import Server, upload

pytestmark = pytest.mark.integration

WORKFLOW = {"name": "hello", "version": "1.0.0",
            "steps": [{"id": "say", "kind": "activity", "activity": "echo",
                       "input": {"who": "{{ input.who }}"}},
                      {"id": "hold", "kind": "wait", "event": "go", "timeout_s": 600}],
            "output": {"said": "{{ say.who }}"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> Any:
    """Tenant acme with an activity, an actor, a workflow instance and a schedule."""
    c = server.client(server.key("acme", "read,invoke,write"))
    assert upload(c, "echo").status_code == 201
    assert c.post("/v1/actors/counter/c1/ask/add", json={"payload": {"n": 5}}).json()[
        "result"] == 5
    assert c.post("/v1/workflows", json={"workflow": WORKFLOW, "input": {"who": "ada"},
                                         "instance": "w1"}).status_code == 202
    assert c.post("/v1/schedules", json={"name": "nightly", "cron": "0 3 * * *",
                                         "target": "counter/c1", "handler": "tick"}
                  ).status_code == 201
    return c


def test_activity_upload_list_show_invoke(server: Server, acme: Any) -> None:
    listed = acme.get("/v1/activities").json()
    assert [a["name"] for a in listed] == ["echo"]
    shown = acme.get("/v1/activities/echo").json()
    assert shown["latest"]["name"] == "echo" and shown["versions"] == ["1.0.0"]
    r = acme.post("/v1/activities/echo/invoke", json={"input": {"a": [1, 2]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"] == {"a": [1, 2]} and body["activity"] == "echo"
    assert body["memory_bytes"] > 0 and body["duration_ms"] > 0
    calls = acme.get("/v1/activities/echo").json()["recent_calls"]
    assert calls and calls[0]["ok"] and "memory_bytes" in calls[0]
    again = upload(acme, "echo")  # identical bytes: nothing changes
    assert again.status_code == 201 and again.json()["created"] is False
    assert acme.get("/v1/activities/echo/1.0.0").json()["version"] == "1.0.0"


def test_actor_paths_and_resources_in_the_journal(acme: Any) -> None:
    r = acme.post("/v1/actors/counter/c2/ask/echo", json={"payload": {"x": 1}})
    assert r.json() == {"msg_id": r.json()["msg_id"], "outcome": "completed",
                        "result": {"x": 1}, "error": None}
    journal = acme.get("/v1/actors/counter/c2/journal").json()["commits"]
    steps = [e for c in journal for e in c.get("events", []) if e["op"] == "activity.done"]
    assert steps and steps[0]["resources"][0]["memory_bytes"] > 0
    assert set(steps[0]["resources"][0]) >= {"duration_ms", "fuel", "memory_bytes", "warm"}
    assert "acme" not in json.dumps(journal)  # internal prefixes never shown
    failed = acme.post("/v1/actors/counter/c2/ask/boom", json={}).json()
    assert failed["outcome"] == "failed" and "boom on purpose" in failed["error"]["message"]
    sent = acme.post("/v1/actors/counter/c2/send/add", json={"payload": {"n": 2},
                                                              "msg_id": "m-1"})
    assert sent.status_code == 202 and sent.json() == {"msg_id": "m-1", "created": True}
    assert acme.post("/v1/actors/counter/c2/send/add",
                     json={"payload": {"n": 2}, "msg_id": "m-1"}).json()["created"] is False
    assert acme.post("/v1/actors/counter/c2/ask/add", json={"payload": {"n": 0}}
                     ).json()["result"] == 2
    show = acme.get("/v1/actors/counter/c2").json()
    assert show["state"]["total"] == 2 and show["actor"] == "counter/c2"
    assert [o["handler"] for o in show["recent"]][-2:] == ["add", "add"]
    parked = acme.post("/v1/actors/counter/c3/send/park", json={})
    assert parked.status_code == 202
    assert acme.post("/v1/actors/counter/c3/signal/go", json={"payload": 7}).status_code == 202
    assert acme.post("/v1/actors/counter/c3/ask/add", json={}).json()["outcome"] == "completed"
    assert acme.post("/v1/actors/counter/c3/cancel", json={"reason": "test"}).status_code == 202


def test_workflow_validate_start_status_event_graph(acme: Any) -> None:
    bad = acme.post("/v1/workflows/validate", json={**WORKFLOW, "steps": [
        {"id": "x", "kind": "activity", "activity": "nope", "input": {}}]})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["pointer"].startswith("/steps/0")
    assert acme.post("/v1/workflows/validate", json=WORKFLOW).json()["valid"] is True
    graph = acme.get("/v1/workflows/w1/graph").json()
    assert graph["steps"]["say"] in ("done", "running") and "style" in graph["mermaid"]
    assert [n["step"] for n in graph["nodes"]] == [None, "say", "hold", None]
    assert [(e["from"], e["to"]) for e in graph["edges"]] == [("n1", "n2"), ("n2", "n3"),
                                                              ("n3", "n4")]
    assert acme.post("/v1/workflows/w1/events/go", json={"payload": {}}).status_code == 202
    import time

    for _ in range(200):
        status = acme.get("/v1/workflows/w1").json()
        if status["status"] == "completed":
            break
        time.sleep(0.05)
    assert status["status"] == "completed" and status["output"] == {"said": "ada"}
    graph = acme.get("/v1/workflows/w1/graph").json()
    assert graph["steps"] == {"say": "done", "hold": "done"}
    assert "flowchart" in acme.post("/v1/workflows/graph", json=WORKFLOW).json()["mermaid"]


def test_problem_documents(server: Server, acme: Any) -> None:
    unknown = acme.post("/v1/activities/echo/invoke", json={"input": {}, "colour": "red"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"] == [{"in": "body", "pointer": "/colour",
                                         "message": "unknown field"}]
    malformed = acme.post("/v1/activities/echo/invoke", content=b'{"input": ',
                          headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["code"] == "malformed_json"
    big = acme.post("/v1/actors/counter/c9/send/add",
                    content=json.dumps({"payload": "x" * (2 << 20)}),
                    headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["type"] == "/problems/body_too_large"
    assert acme.get("/v1/actors/counter/c9").status_code == 404  # nothing half-written
    invalid = acme.post("/v1/activities/echo/invoke", json={"input": [1]})
    assert invalid.status_code == 422 and invalid.json()["code"] == "input_invalid"
    assert invalid.headers["content-type"] == "application/problem+json"
    assert server.client(None).get("/v1/activities").status_code == 401
    assert server.client("loom_000000000000_" + "x" * 43).get("/v1/activities").status_code == 401


def test_scopes(server: Server, acme: Any) -> None:
    reader = server.client(server.key("acme", "read"))
    assert reader.get("/v1/activities").status_code == 200
    denied = reader.post("/v1/activities/echo/invoke", json={"input": {}})
    assert denied.status_code == 403 and denied.json()["code"] == "scope_missing"
    assert upload(reader, "echo").status_code == 403
    invoker = server.client(server.key("acme", "invoke"))
    assert invoker.post("/v1/activities/echo/invoke", json={"input": {}}).status_code == 200
    assert invoker.get("/v1/activities").status_code == 403
    assert invoker.post("/v1/actors/counter/c1/cancel", json={}).status_code == 403
    assert acme.get("/v1/cluster").status_code == 403
    admin = server.client(server.key("acme", "admin"))
    assert admin.get("/v1/cluster").status_code == 200


def test_revoked_key_is_refused(server: Server) -> None:
    import subprocess
    import time

    from service_harness import LOOM, ROOT

    key = server.key("acme", "read")
    c = server.client(key)
    assert c.get("/v1/activities").status_code == 200
    _, key_id, secret = key.split("_", 2)  # the secret may hold "_" itself
    listed = subprocess.run([LOOM, "keys", "list", "--tenant", "acme"], cwd=ROOT, env=server.env,
                            capture_output=True, text=True, check=True).stdout
    assert key_id in listed and secret not in listed
    subprocess.run([LOOM, "keys", "revoke", key_id], cwd=ROOT, env=server.env, check=True,
                   capture_output=True)
    for _ in range(100):  # the key ring re-reads a record after 2 s
        if c.get("/v1/activities").status_code == 401:
            break
        time.sleep(0.1)
    assert c.get("/v1/activities").status_code == 401


# Every route, called with tenant B's key on tenant A's names. B either gets 404 (the name is
# not B's), or acts on its own namespace (a message to B's own counter/c1) and sees none of
# A's data; A's things are unchanged afterwards.
CALLS: dict[tuple[str, str], tuple[dict[str, Any] | None, set[int]]] = {
    ("POST", "/v1/activities"): (None, {201}),
    ("GET", "/v1/activities"): (None, {200}),
    ("GET", "/v1/activities/{name}"): (None, {404}),
    ("GET", "/v1/activities/{name}/{version}"): (None, {404}),
    ("POST", "/v1/activities/{name}/invoke"): ({"input": {}}, {404}),
    ("POST", "/v1/actors/{type}/{id}/send/{handler}"): ({"payload": {"n": 1}}, {202}),
    ("POST", "/v1/triggers/{type}/{id}/{handler}"): ({"n": 1}, {202}),
    ("POST", "/v1/actors/{type}/{id}/signal/{event}"): ({"payload": 1}, {202}),
    ("POST", "/v1/actors/{type}/{id}/ask/{handler}"): ({"payload": {"n": 1}}, {200}),
    ("POST", "/v1/actors/{type}/{id}/cancel"): ({}, {202}),  # B's own c1 (asked above)
    ("GET", "/v1/actors/{type}/{id}"): (None, {404}),
    ("GET", "/v1/actors/{type}/{id}/journal"): (None, {404}),
    ("GET", "/v1/runs"): (None, {200}),  # B's own runs only
    ("POST", "/v1/workflows/validate"): (WORKFLOW, {422}),  # B has no `echo`
    ("POST", "/v1/workflows/graph"): (WORKFLOW, {422}),
    ("POST", "/v1/workflows"): ({"workflow": WORKFLOW, "instance": "w1"}, {422}),
    ("GET", "/v1/workflows/{instance}"): (None, {404}),
    ("POST", "/v1/workflows/{instance}/events/{event}"): ({"payload": 1}, {404}),
    ("GET", "/v1/workflows/{instance}/graph"): (None, {404}),
    ("GET", "/v1/cluster"): (None, {403}),  # fleet-wide: admin keys only
    ("GET", "/v1/dead-letters"): (None, {200}),
    ("POST", "/v1/dead-letters/{type}/{id}/{msg_id}/retry"): (None, {404}),
    ("DELETE", "/v1/dead-letters/{type}/{id}/{msg_id}"): (None, {404}),
    ("POST", "/v1/schedules"): ({"name": "nightly", "cron": "@every 1h",
                                 "target": "counter/c1", "handler": "tick"}, {201}),
    ("GET", "/v1/schedules"): (None, {200}),
    ("DELETE", "/v1/schedules/{name}"): (None, {404}),
}
NAMES = {"name": "echo", "version": "1.0.0", "type": "counter", "id": "c1", "handler": "add",
         "event": "go", "instance": "w1", "msg_id": "m-dead"}


def test_every_endpoint_with_the_wrong_tenants_key(server: Server, acme: Any) -> None:
    spec = acme.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == set(CALLS), "a new route needs a line in CALLS"
    before = {"state": acme.get("/v1/actors/counter/c1").json()["state"],
              "wf": acme.get("/v1/workflows/w1").json()["status"],
              "schedules": acme.get("/v1/schedules").json()}
    other = server.client(server.key("globex", "read,invoke,write"))
    for (method, path), (body, expected) in sorted(CALLS.items()):
        url = path.format(**NAMES)
        if path == "/v1/activities" and method == "POST":
            r = upload(other, "slugify", as_name="other")
        elif path.startswith("/v1/triggers"):
            r = other.request(method, url, json=body, headers={"Idempotency-Key": "k1"})
        else:
            r = other.request(method, url, json=body)
        assert r.status_code in expected, (method, path, r.status_code, r.text)
        if r.status_code == 404:
            assert r.json()["code"] == "not_found" and "acme" not in r.text
        text = r.text
        assert "acme" not in text and '"total":5' not in text, (method, path, text)
    assert [a["name"] for a in other.get("/v1/activities").json()] == ["other"]
    assert acme.get("/v1/actors/counter/c1").json()["state"] == before["state"]
    assert acme.get("/v1/schedules").json() == before["schedules"]
    assert acme.get("/v1/workflows/w1").json()["status"] == before["wf"]
    assert [a["name"] for a in acme.get("/v1/activities").json()] == ["echo"]


def test_runs_are_listed_and_filtered_from_the_run_index(server: Server, acme: Any) -> None:
    assert acme.post("/v1/actors/counter/v1/ask/echo", json={"payload": {"v": 1}}
                     ).json()["outcome"] == "completed"
    assert acme.post("/v1/actors/counter/v1/ask/boom", json={}).json()["outcome"] == "failed"
    assert acme.post("/v1/actors/counter/v2/send/park", json={}).status_code == 202
    every = acme.get("/v1/runs").json()
    assert every["next"] is None and "acme" not in json.dumps(every["runs"])
    assert {"counter/c1", "counter/v1", "workflow/w1"} <= {r["actor"] for r in every["runs"]}
    starts = [r["started"] for r in every["runs"]]
    assert starts == sorted(starts, reverse=True)  # newest first

    def listed(**query: Any) -> list[tuple[str, str | None, str]]:
        r = acme.get("/v1/runs", params=query)
        assert r.status_code == 200, r.text
        return [(r["actor"], r["handler"], r["status"]) for r in r.json()["runs"]]

    assert listed(type="counter", id_prefix="v1") == [("counter/v1", "boom", "failed"),
                                                     ("counter/v1", "echo", "completed")]
    assert listed(activity="echo", id_prefix="v") == [("counter/v1", "echo", "completed")]
    failed = acme.get("/v1/runs", params={"status": "failed", "id_prefix": "v1"}).json()
    assert failed["runs"][0]["error"]["message"].endswith("boom on purpose")
    deadline = time.monotonic() + 10
    while ("counter/v2", "park", "parked") not in listed(status="parked"):
        assert time.monotonic() < deadline, listed(type="counter")
        time.sleep(0.05)
    parked = acme.get("/v1/runs", params={"status": "parked", "type": "counter"}).json()
    assert parked["runs"][0]["waiting"] == "event"
    assert listed(since="1h", type="counter", id_prefix="v") == listed(type="counter",
                                                                       id_prefix="v")
    assert listed(until="2000-01-01T00:00:00Z") == []
    seen, after = [], None  # keyset pages of one row
    while True:
        page = acme.get("/v1/runs", params={"limit": 1, **({"after": after} if after else {})}
                        ).json()
        seen += [(r["actor"], r["msg"]) for r in page["runs"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == [(r["actor"], r["msg"]) for r in acme.get("/v1/runs").json()["runs"]]
    for bad, field in (({"status": "sleeping"}, "status"), ({"since": "soon"}, "since"),
                       ({"after": "xyz"}, "after"), ({"limit": 0}, "limit")):
        r = acme.get("/v1/runs", params=bad)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["pointer"] == f"/{field}", r.text
    # another tenant sees none of these
    other = server.client(server.key("initech", "read"))
    assert other.get("/v1/runs").json() == {"runs": [], "next": None}
    # the operator's CLI asks the same index (all tenants; --tenant narrows)
    import subprocess

    from service_harness import LOOM, ROOT

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LOOM, "actor", "list", *args], cwd=ROOT, env=server.env,
                              capture_output=True, text=True)

    out = cli("--tenant", "acme", "--status", "failed", "--json")
    assert out.returncode == 0, out.stderr
    assert {(r["actor"], r["handler"]) for r in json.loads(out.stdout)} >= {
        ("counter/acme~v1", "boom")}
    table = cli("--tenant", "acme", "--type", "counter", "--activity", "echo").stdout
    assert table.startswith("ACTOR") and "counter/acme~v1" in table and "boom" not in table
    bad = cli("--status", "sleeping")
    assert bad.returncode != 0 and "--status: 'sleeping' is not one of" in bad.stderr


def test_openapi_document(server: Server) -> None:
    spec = server.client(None).get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    invoke = spec["paths"]["/v1/activities/{name}/invoke"]["post"]
    assert "InvokeRequest" in json.dumps(invoke["requestBody"])
    assert Path(__file__).exists()
