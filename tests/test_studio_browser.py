"""The Studio in a real browser: Playwright driving Debian's chromium against `loom serve`
(uvicorn, its own process). Clicks through activities (manifest, invoke form, recent calls),
an actor's journal timeline with resources, a workflow's graph coloured live, dead letters
and the cluster page (alone and with a real fleet)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from service_harness import LOOM, ROOT, Server, upload

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    if not shutil.which("chromium"):
        pytest.skip("chromium is not installed (make studio-browser installs it)")
    s = Server(tmp_path_factory.mktemp("studio"))
    key = s.key("acme", "read,invoke,write")
    c = s.client(key)
    assert upload(c, "echo").status_code == 201
    assert upload(c, "slugify").status_code == 201
    assert c.post("/v1/actors/counter/s1/ask/echo", json={"payload": {"hi": 1}}).status_code == 200
    assert c.post("/v1/actors/counter/s2/ask/boom", json={}).json()["outcome"] == "failed"
    yield s, key
    s.stop()


@pytest.fixture(scope="module")
def browser(studio: tuple[Server, str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser: Any) -> Any:
    return browser.new_page()


def _use_key(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.click("#use-key")


def test_activities_invoke_and_recent_calls(studio: tuple[Server, str], page: Any) -> None:
    server, key = studio
    page.goto(f"{server.url}/studio/")
    page.fill("#key", key)
    page.click("#use-key")
    page.wait_for_selector("tr[data-activity='slugify']")
    assert page.locator("#activity-list tbody tr").count() == 2
    page.click("tr[data-activity='slugify']")
    page.wait_for_selector("#invoke-form")
    assert "timeout_ms" in page.inner_text("#activity-detail")  # the limits
    fields = page.locator("#invoke-form input")
    assert fields.count() >= 1  # generated from the input schema
    first = fields.first.get_attribute("name")
    page.fill(f"#invoke-form input[name='{first}']", "Hello Loom World")
    page.click("#invoke-form button")
    page.wait_for_selector("#invoke-output:has-text('KiB')")
    assert "hello-loom-world" in page.inner_text("#invoke-output")
    page.wait_for_selector("#recent-calls tr.done")


def test_actor_timeline_shows_resources(studio: tuple[Server, str], page: Any) -> None:
    page.click("nav button[data-tab='actors']")
    page.fill("#actor-type", "counter")
    page.fill("#actor-id", "s1")
    page.click("#actor-search button")
    page.wait_for_selector("#timeline li.event")
    text = page.inner_text("#timeline")
    assert "activity.done echo" in text and "KiB" in text and " ms" in text
    assert "acme" not in page.content()
    page.fill("#actor-id", "nobody")
    page.click("#actor-search button")
    page.wait_for_selector("#status:has-text('404')")


def test_actors_page_lists_runs_filters_and_opens_the_timeline(
        studio: tuple[Server, str], page: Any) -> None:
    page.click("nav button[data-tab='actors']")
    page.wait_for_selector("#run-list tr.run[data-actor='counter/s2']")
    actors = page.locator("#run-list tr.run").evaluate_all("rs => rs.map(r => r.dataset.actor)")
    assert {"counter/s1", "counter/s2"} <= set(actors)
    assert "acme" not in page.inner_text("#run-list")
    page.select_option("#run-status", "failed")
    page.click("#run-filters button")
    page.wait_for_function("document.querySelectorAll('#run-list tr.run').length === 1")
    row = page.locator("#run-list tr.run")
    assert row.get_attribute("data-actor") == "counter/s2"
    assert "boom on purpose" in row.inner_text() and "failed" in row.inner_text()
    page.select_option("#run-status", "completed")
    page.fill("#run-activity", "echo")
    page.click("#run-filters button")
    page.wait_for_selector("#run-list tr.run[data-actor='counter/s1']")
    assert page.locator("#run-list tr.run").count() == 1
    page.click("#run-list tr.run[data-actor='counter/s1'] a.actor-link")
    page.wait_for_selector("#actor-detail h2:has-text('counter/s1')")
    page.wait_for_selector("#timeline li.event")
    assert "activity.done echo" in page.inner_text("#timeline")
    page.fill("#run-since", "soon")
    page.click("#run-filters button")
    page.wait_for_selector("#status:has-text('422')")
    page.fill("#run-since", "")
    page.fill("#run-activity", "")


def test_dead_letters_tab_and_bad_key(studio: tuple[Server, str], page: Any) -> None:
    page.click("nav button[data-tab='dead']")
    page.wait_for_selector("#dead-list")
    assert page.locator("#dead-list tbody tr").count() == 0
    page.fill("#key", "loom_000000000000_" + "x" * 43)
    page.click("#use-key")
    page.wait_for_selector("#status:has-text('401')")


HOLD = {"name": "hold", "version": "1.0.0",
        "steps": [{"id": "say", "kind": "activity", "activity": "echo", "input": {"who": "x"}},
                  {"id": "hold", "kind": "wait", "event": "go", "timeout_s": 600}]}
BRANCHY = {"name": "branchy", "version": "1.0.0", "steps": [
    {"id": "first", "kind": "activity", "activity": "echo", "input": {},
     "compensation": {"activity": "echo"}},
    {"id": "fan", "kind": "parallel", "branches": [
        [{"id": "left", "kind": "activity", "activity": "echo", "input": {}},
         {"id": "left2", "kind": "activity", "activity": "echo", "input": {}}],
        [{"id": "right", "kind": "activity", "activity": "echo", "input": {}}]]},
    {"id": "check", "kind": "condition", "if": "1 == 1",
     "then": [{"id": "yes", "kind": "activity", "activity": "echo", "input": {}}]}]}
FILL = "(sel) => getComputedStyle(document.querySelector(sel + ' .shape')).fill"


def _open_workflow(studio: tuple[Server, str], page: Any, wf: Any, instance: str) -> Any:
    """Start an instance through the API and open it in the Studio; the API client."""
    server, key = studio
    c = server.client(key)
    assert c.post("/v1/workflows", json={"workflow": wf, "input": {},
                                         "instance": instance}).status_code == 202
    page.goto(f"{server.url}/studio/")
    _use_key(page, key)
    page.click("nav button[data-tab='workflows']")
    page.fill("#wf-instance", instance)
    page.click("#wf-search button")
    return c


def test_workflow_graph_is_drawn_coloured_and_updates_while_it_runs(
        studio: tuple[Server, str], page: Any) -> None:
    c = _open_workflow(studio, page, HOLD, "g1")
    hold = "#wf-graph g.node[data-step='hold']"
    page.wait_for_selector(f"{hold}[data-status='running']")
    say = "#wf-graph g.node[data-step='say']"
    assert page.get_attribute(say, "data-status") == "done"
    assert page.evaluate(FILL, say) == "rgb(183, 228, 199)"  # done: green
    assert page.evaluate(FILL, hold) == "rgb(255, 224, 138)"  # running: yellow
    assert page.locator("#wf-graph g.node").count() == 4  # start, say, hold, end
    assert page.locator("#wf-graph path.edge").count() == 3
    assert "hold: wait go" in (page.text_content(hold) or "")
    page.evaluate("window.notReloaded = true")  # gone if the page were loaded again
    assert c.post("/v1/workflows/g1/events/go", json={"payload": {}}).status_code == 202
    page.wait_for_selector(f"{hold}[data-status='done']")  # the page polls; no reload
    assert page.evaluate("window.notReloaded") is True
    assert page.evaluate(FILL, hold) == "rgb(183, 228, 199)"
    page.wait_for_selector("#wf-title:has-text('completed')")


def test_workflow_graph_layout_of_branches(studio: tuple[Server, str], page: Any) -> None:
    _open_workflow(studio, page, BRANCHY, "g2")
    page.wait_for_selector("#wf-title:has-text('g2: completed')")
    boxes = page.locator("#wf-graph g.node").evaluate_all(
        "gs => gs.map(g => { const b = g.getBBox(); return [b.x, b.y, b.width, b.height]; })")
    assert len(boxes) == 11  # start, first, fan, join, left, left2, right, check, yes, end(s)
    for i, (x, y, w, h) in enumerate(boxes):
        for (x2, y2, w2, h2) in boxes[i + 1:]:  # no two nodes overlap
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
    assert page.locator("#wf-graph g.node.step-done").count() >= 7
    assert "undo: echo" in (page.text_content("#wf-graph g.node[data-step='first']") or "")
    assert {"yes", "no"} <= set(page.locator("#wf-graph text.edge-label").all_text_contents())


def test_cluster_page_alone_and_for_admins_only(studio: tuple[Server, str], page: Any) -> None:
    server, key = studio
    _use_key(page, key)
    page.click("nav button[data-tab='cluster']")
    page.wait_for_selector("#cluster-denied:has-text('admin scope')")
    _use_key(page, server.key("acme", "admin"))
    page.click("nav button[data-tab='cluster']")
    page.wait_for_selector("#cluster-mode:has-text('not in a fleet')")
    summary = page.inner_text("#cluster-summary")
    assert "dead-lettered" in summary and "counter" in summary  # this server's actor types
    assert "No limits configured" in page.inner_text("#cluster-limits")
    assert "closed" in page.inner_text("#cluster-breakers")
    _use_key(page, key)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Any]:
    """redis-server, one `loom worker` (code version v1) and `loom serve` on one journal."""
    import os
    import subprocess

    import redis

    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(url).flushdb()
    home = tmp_path_factory.mktemp("fleet")
    env = {"LOOM_REDIS_URL": url, "LOOM_BREAKER_URL": url, "LOOM_LEASE_TTL_S": "2",
           "LOOM_PARTITIONS": "4", "LOOM_LIMITS": '{"http_post": {"concurrency": 4}}'}
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    log = (home / "worker.log").open("wb")
    worker = subprocess.Popen(
        [LOOM, "worker", "--module", str(ROOT / "tests/service_actors.py"), "--poll", "0.01"],
        cwd=ROOT, env={**base, **env, "LOOM_HOME": str(home), "LOOM_CODE_VERSION": "v1"},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Server(home, env={**env, "LOOM_SERVICE_RUN_ACTORS": "false"})
    try:
        yield server, url, home
    finally:
        server.stop()
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def test_cluster_page_shows_the_fleet(fleet: Any, browser: Any) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import pybreaker

    from runtime.actors.resilience import redis_breaker_storage
    from runtime.cluster.partitions import partition_of
    from runtime.journal import SqliteJournal
    from runtime.limits import Grant, limiter_from_settings

    server, url, home = fleet
    admin = server.key("ops", "admin")
    # a run the worker parks (pinned to v1), and one pinned to v0 that nobody can resume
    assert server.client(admin).post("/v1/actors/counter/p1/send/park", json={}
                                     ).status_code == 202

    async def stranded() -> None:
        journal = SqliteJournal(home / "loom.db")
        try:
            await journal.enqueue({"id": "m", "target": "gone/1", "kind": "call",
                                   "payload": None, "deliver_at": 0.0})
            await journal.acquire("gone/1", "old-worker", 1.0, 10.0)
            await journal.settle("gone/1", "old-worker", now=1.0, seen_n=-1, busy=False,
                                 release=True, version="v0")
        finally:
            await journal.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        pool.submit(asyncio.run, stranded()).result()
    grant = limiter_from_settings('{"http_post": {"concurrency": 4}}', url).try_acquire(
        "http_post", "ops", "call-1")
    assert isinstance(grant, Grant)
    breaker = pybreaker.CircuitBreaker(fail_max=1, state_storage=redis_breaker_storage(url)(
        "flaky"))
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: 1 / 0)

    page = browser.new_page()
    try:
        page.goto(f"{server.url}/studio/")
        _use_key(page, admin)
        page.click("nav button[data-tab='cluster']")
        # the page refreshes itself: wait for the worker to own every partition and park p1
        page.wait_for_selector("#cluster-summary:has-text('(0 unowned)')", timeout=60_000)
        page.wait_for_selector("#cluster-versions tr[data-version='v1']", timeout=60_000)
        assert "1 worker(s), 4 partitions" in page.inner_text("#cluster-summary")
        worker = page.locator("#cluster-workers tr.worker")
        assert worker.count() == 1 and "v1" in worker.inner_text()
        assert page.locator("#cluster-partitions tr.partition").count() == 4
        gone = partition_of("gone/1", 4)
        assert int(page.inner_text(f"#cluster-partitions tr[data-partition='{gone}'] .lag")) >= 1
        v0 = page.locator("#cluster-versions tr[data-version='v0']")
        assert "stranded" in (v0.get_attribute("class") or "") and "nobody" in v0.inner_text()
        assert "v0" in page.inner_text("#cluster-stranded")
        v1 = page.locator("#cluster-versions tr[data-version='v1']")
        assert worker.get_attribute("data-worker") in v1.inner_text()
        assert page.locator("#cluster-limits tr[data-limit='http_post'] td").all_inner_texts(
            ) == ["http_post", "4", "-", "1"]
        assert page.inner_text("#cluster-breakers tr[data-breaker='flaky'] .breaker-open"
                               ) == "open"
        assert "0 dead-lettered" in page.inner_text("#cluster-dead")
    finally:
        page.close()
