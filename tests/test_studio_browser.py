"""The Studio in a real browser: Playwright driving Debian's chromium against `loom serve`
(uvicorn, its own process). Clicks through activities (manifest, invoke form, recent calls),
an actor's journal timeline with resources, a workflow's coloured steps and dead letters."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from service_harness import Server, upload

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
def page(studio: tuple[Server, str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page()
        yield pg
        browser.close()


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
