"""The HTTP capability against a hostile guest or upload (a review's findings): header
names and values that would inject or fold lines, or smuggle a dropped header, are refused
without echoing the value (it may hold a secret); lookups a resolver never answers cannot
pile up threads; response headers count against a cap; addresses that embed a private
IPv4 address, and site-local IPv6, are not public."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.executor import http_capability as hc
from schemas.manifest import HttpCapability


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback server that records each raw request and answers `ok`."""
    srv = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], seen
    srv.close()


def cap(port: int, **kw: Any) -> HttpCapability:
    return HttpCapability(allow=[{"scheme": "http", "host": "127.0.0.1", "port": port}],
                          allow_private=True, **kw)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer sk_live_SECRET\r"},  # a secret file saved with CRLF
    {"X-A": "v\r\n Injected: 1"},  # a folded line
    {"X-A": "v\nHost: internal"},
    {"Host\t": "internal.admin"},  # a dropped header, spelled to slip past the filter
    {"Transfer-Encoding ": "chunked"},
    {"X-A": "caf\u00e9 \u2603"},  # not Latin-1: http.client raised from deep inside
    {"X-\u00e9": "v"},
])
def test_a_header_that_would_inject_a_line_is_refused_unechoed(
        server: tuple[int, list[bytes]], headers: dict[str, str]) -> None:
    port, seen = server
    answer = hc.perform({"method": "GET", "url": f"http://127.0.0.1:{port}/",
                         "headers": headers}, cap(port), idempotency_key=None, timeout_s=5)
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
    assert "SECRET" not in str(answer) and "internal" not in str(answer)
    assert seen == []  # nothing was sent


def test_plain_headers_still_go_and_dropped_ones_are_dropped(
        server: tuple[int, list[bytes]]) -> None:
    port, seen = server
    answer = hc.perform({"method": "GET", "url": f"http://127.0.0.1:{port}/",
                         "headers": {"X-Ok": "caf\u00e9", "Host": "evil", "idempotency-key": "x"}},
                        cap(port), idempotency_key="k1", timeout_s=5)
    assert answer["ok"] is True and answer["body"] == "ok", answer
    sent = seen[0].decode("latin-1")
    assert "X-Ok: caf\u00e9" in sent and "Host: 127.0.0.1" in sent and "evil" not in sent
    assert "Idempotency-Key: k1" in sent


def test_lookups_that_never_answer_hold_a_bounded_number_of_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo
    release = threading.Event()

    def stuck(host: str, *args: Any, **kw: Any) -> Any:
        if host == "stuck.example":
            release.wait(30)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    c = HttpCapability(allow=[{"scheme": "https", "host": "stuck.example"}], timeout_ms=1)
    before = threading.active_count()
    try:
        answers = [hc.perform({"method": "GET", "url": "https://stuck.example/"}, c,
                              idempotency_key=None, timeout_s=0.001) for _ in range(200)]
        assert all(a["ok"] is False for a in answers)
        assert threading.active_count() - before <= hc.MAX_LOOKUPS
        assert "lookups are already running" in answers[-1]["error"]["message"]
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hc._lookups.acquire(timeout=5)  # every slot came back
    hc._lookups.release()


def test_response_headers_count_against_a_cap() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            headers = b"".join(b"X-%d: %s\r\n" % (i, b"A" * 60000) for i in range(20))
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    try:
        answer = hc.perform({"method": "GET", "url": f"http://127.0.0.1:{port}/"},
                            cap(port, max_response_bytes=16), idempotency_key=None,
                            timeout_s=5)
    finally:
        srv.close()
    assert answer["ok"] is False and answer["error"]["code"] == "response_too_large", answer
    assert "headers" not in answer


@pytest.mark.parametrize("address", ["2002:a9fe:a9fe::", "2002:7f00:1::", "2002:0a00:0001::",
                                     "fec0::1", "192.0.0.8", "::ffff:169.254.169.254"])
def test_addresses_that_embed_or_are_private_are_not_public(address: str) -> None:
    assert not hc.is_public(ipaddress.ip_address(address))


def test_public_addresses_stay_public() -> None:
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "2002:5db8:d822::"):
        assert hc.is_public(ipaddress.ip_address(address)), address
