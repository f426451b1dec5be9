"""The http_post sample activity against a real loopback server, through the executor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from servers import Response

from runtime import errors
from runtime.executor import Executor
from runtime.settings import load_settings

BUILD = Path(__file__).resolve().parents[1] / "activities" / "build"


@pytest.fixture
def executor(tmp_path: Path, http_server: Any) -> Any:
    port = int(http_server.base_url.rsplit(":", 1)[1])
    manifest = json.loads((BUILD / "http_post.manifest.json").read_text())
    manifest["capabilities"]["http"] = {
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}],
        "allow_private": True, "max_response_bytes": 4096}
    manifest.pop("sha256")
    with Executor(load_settings(home=tmp_path)) as ex:
        ex.upload((BUILD / "http_post.wasm").read_bytes(), manifest)
        yield ex


def test_posts_json_with_the_idempotency_key(executor: Executor, http_server: Any) -> None:
    http_server.reset()
    http_server.route("POST", "/charge", Response(200, b'{"id": "ch_1"}',
                                                  {"Content-Type": "application/json"}))
    out = executor.invoke_sync("http_post", {"url": http_server.url("/charge"),
                                             "body": {"amount": 5}}, idempotency_key="k-1")
    assert out == {"status": 200, "body": {"id": "ch_1"}}
    [req] = http_server.requests
    assert json.loads(req.body) == {"amount": 5}
    assert req.headers["idempotency-key"] == "k-1"


@pytest.mark.parametrize("status, code, retryable", [
    (503, "upstream_5xx", True), (404, "upstream_4xx", False)])
def test_upstream_errors_are_typed(executor: Executor, http_server: Any, status: int,
                                   code: str, retryable: bool) -> None:
    http_server.route("POST", "/flaky", Response(status, b"nope", {}))
    with pytest.raises(errors.GuestError) as info:
        executor.invoke_sync("http_post", {"url": http_server.url("/flaky")})
    assert info.value.details["code"] == code and info.value.retryable is retryable


def test_a_response_over_the_cap_is_not_retryable(executor: Executor, http_server: Any) -> None:
    http_server.route("POST", "/huge", Response(200, b"x" * 10_000,
                                                {"Content-Type": "text/plain"}))
    with pytest.raises(errors.GuestError) as info:
        executor.invoke_sync("http_post", {"url": http_server.url("/huge")})
    assert info.value.details["code"] == "response_too_large"
    assert info.value.retryable is False
