"""The http_post sample activity against a real loopback server, through the executor."""

from __future__ import annotations

import json
import socket
import threading
import time
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


# -- one deadline per host call (issue 7, defect 9) ------------------------------------------

class TrickleServer:
    """A real loopback server that answers every request one byte every `interval` seconds
    (each byte well inside any per-read socket timeout), for about `seconds` in all.

    `phase="headers"` trickles the status line itself; `phase="body"` sends the headers at
    once, then the body byte by byte.
    """

    def __init__(self, phase: str, seconds: float = 6, interval: float = 0.2) -> None:
        self.phase, self.seconds, self.interval = phase, seconds, interval
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            body = b"x" * int(self.seconds / self.interval)
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n")
            slow = head + body if self.phase == "headers" else body
            try:
                if self.phase == "body":
                    conn.sendall(head)
                for i in range(len(slow)):
                    if self.stop.wait(self.interval if i else 0.0):
                        return
                    conn.sendall(slow[i:i + 1])
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_cannot_outlive_the_activity_deadline(tmp_path: Path,
                                                                  phase: str) -> None:
    server = TrickleServer(phase)
    manifest = json.loads((BUILD / "http_post.manifest.json").read_text())
    manifest["capabilities"]["http"] = {
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": server.port}],
        "allow_private": True, "timeout_ms": 30_000}
    manifest["limits"] = {**manifest.get("limits", {}), "timeout_ms": 1000,
                          "host_call_timeout_ms": 30_000}
    manifest.pop("sha256")
    try:
        with Executor(load_settings(home=tmp_path)) as ex:
            ex.upload((BUILD / "http_post.wasm").read_bytes(), manifest)
            started = time.monotonic()
            with pytest.raises(errors.ActivityError) as info:
                ex.invoke_sync("http_post", {"url": f"http://127.0.0.1:{server.port}/slow"})
            took = time.monotonic() - started
    finally:
        server.close()
    # Before: each byte reset the per-read socket timeout, and the call took ~6 s.
    assert took < 1.6, f"took {took:.2f}s with timeout_ms=1000"
    assert info.value.retryable is True  # a timeout (or a retryable network error)


def test_the_budget_covers_the_whole_request() -> None:
    """perform() itself: a 0.5 s budget against a trickled body ends in ~0.5 s."""
    from runtime.executor import http_capability
    from schemas.manifest import HttpCapability

    server = TrickleServer("body", seconds=4)
    cap = HttpCapability.model_validate({
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": server.port}],
        "allow_private": True})
    try:
        started = time.monotonic()
        out = http_capability.perform({"method": "GET",
                                       "url": f"http://127.0.0.1:{server.port}/"},
                                      cap, idempotency_key=None, timeout_s=0.5)
        took = time.monotonic() - started
    finally:
        server.close()
    assert out["ok"] is False and "timed out" in out["error"]["message"], out
    assert 0.4 < took < 0.9, took


def test_name_resolution_is_bounded_by_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo has no timeout of its own; a hung lookup is abandoned at the deadline.
    (A hanging resolver is not cheap to run for real, so this one stubs getaddrinfo.)"""
    from runtime.executor import http_capability
    from schemas.manifest import HttpCapability

    release = threading.Event()

    def hanging(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        raise socket.gaierror("gave up")

    monkeypatch.setattr(http_capability.socket, "getaddrinfo", hanging)
    cap = HttpCapability.model_validate({"allow": [{"host": "slow-dns.example"}]})
    started = time.monotonic()
    try:
        out = http_capability.perform({"url": "https://slow-dns.example/"}, cap,
                                      idempotency_key=None, timeout_s=0.3)
    finally:
        release.set()
    assert time.monotonic() - started < 0.8
    assert out["ok"] is False and "timed out" in out["error"]["message"], out


def test_a_connection_close_response_body_arriving_later_is_read() -> None:
    """http.client closes the connection once it has the headers of a `Connection: close`
    response; the body must still be readable (found by the README test: EBADF when the
    body came in a later packet)."""
    from runtime.executor import http_capability
    from schemas.manifest import HttpCapability

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def answer() -> None:
        conn, _ = sock.accept()
        with conn:
            request = b""
            while not request.endswith(b"{}"):  # the whole request, or closing resets it
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            conn.sendall(b"HTTP/1.0 200 OK\r\nConnection: close\r\n"
                         b"Content-Type: application/json\r\n\r\n")
            time.sleep(0.2)  # the body arrives after the headers were parsed
            conn.sendall(b'{"id": "late-body"}')

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    cap = HttpCapability.model_validate({
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}], "allow_private": True})
    try:
        out = http_capability.perform({"method": "POST", "url": f"http://127.0.0.1:{port}/",
                                       "body": "{}"}, cap, idempotency_key="k", timeout_s=5)
    finally:
        thread.join(5)
        sock.close()
    assert out["ok"] is True, out
    assert out["status"] == 200 and out["body"] == '{"id": "late-body"}'


@pytest.mark.parametrize("request_fields", [{"body": {"amount": 5}}, {"body": 5},
                                            {"headers": ["X-Trace"]}])
def test_a_body_that_is_not_text_or_headers_not_an_object_is_a_bad_request(
        request_fields: dict[str, Any]) -> None:
    """Before: a non-string body went out as no body at all, and list headers trapped with a
    bare ValueError. Now the guest gets `bad_request` and nothing is sent."""
    from runtime.executor import http_capability
    from schemas.manifest import HttpCapability

    cap = HttpCapability.model_validate({
        "allow": [{"scheme": "http", "host": "127.0.0.1", "port": 9}], "allow_private": True})
    out = http_capability.perform({"method": "POST", "url": "http://127.0.0.1:9/x",
                                   **request_fields}, cap, idempotency_key="k", timeout_s=1.0)
    assert out["ok"] is False and out["error"]["code"] == "bad_request", out
