"""Outbound HTTP for guests: allowlist by (scheme, host, port), no private addresses unless
granted, connection pinned to the vetted address, bounded time and response size.

Time: one overall deadline per request covers name resolution, connect, TLS handshake,
sending and reading the whole response. A socket timeout alone bounds each read, so a
server trickling a byte a second would hold the calling (guest) thread indefinitely;
here every socket operation gets only the time left, and resolution runs on a helper
thread that is abandoned when the deadline passes (getaddrinfo has no timeout).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

from runtime import errors
from schemas.manifest import HttpCapability

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
DROPPED_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "upgrade",
                   "idempotency-key", "proxy-authorization", "te", "trailer"}

Observer = Callable[[str, str, dict[str, str]],
                    AbstractContextManager[Callable[[dict[str, Any]], None]]]
observer: Observer | None = None
"""Entered around each request that passes the allowlist, as `observer(method, url, headers)`
(the URL without its query); it may add headers (tracing adds a `traceparent` the guest did
not set) and is handed the answer. Set by tracing setup (`runtime.service.tracing`); None
keeps the executor free of any tracing code."""


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:  # fec0::/10, deprecated but routed by some networks
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour  # 2002:a9fe:a9fe:: is 169.254.169.254
        if embedded is not None:
            ip = embedded
    if any(ip in net for net in _NOT_PUBLIC):
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


# what some Python versions' `is_global` misses (192.0.0.0/24: CVE-2024-4032)
_NOT_PUBLIC = [ipaddress.ip_network("192.0.0.0/24")]
# header names: RFC 9110 tokens (no whitespace, so none slips past DROPPED_HEADERS); values:
# no CR, LF or NUL (no injected or folded lines)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]|[^\x00-\xff]")  # (and only Latin-1)
MAX_RESPONSE_HEADER_BYTES = 64 * 1024
# lookups running at once, process-wide: one given up on at its deadline keeps its thread
# (getaddrinfo cannot be cancelled) until the resolver answers; beyond this, refused
MAX_LOOKUPS = 32
_lookups = threading.BoundedSemaphore(MAX_LOOKUPS)


def check_url(url: str, cap: HttpCapability) -> tuple[str, str, int, str]:
    """Return (scheme, host, port, path) if the allowlist admits `url`; else CapabilityDenied."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise errors.CapabilityDenied(f"malformed URL {url!r}: {exc}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        raise errors.CapabilityDenied(f"URL {url!r} is not an absolute http(s) URL")
    if parts.username or parts.password:
        raise errors.CapabilityDenied("credentials in URLs are not allowed; use a secret header")
    port = port or (443 if scheme == "https" else 80)
    for target in cap.allow:
        if (target.scheme == scheme and target.host.lower().strip("[]") == host
                and target.effective_port() == port):
            path = parts.path or "/"
            return scheme, host, port, path + (f"?{parts.query}" if parts.query else "")
    raise errors.CapabilityDenied(f"{scheme}://{host}:{port} is not on the HTTP allowlist")


def _getaddrinfo(host: str, port: int, deadline: float) -> list[Any]:
    """`socket.getaddrinfo`, given up on at `deadline` (the lookup thread is abandoned)."""
    try:  # an address literal resolves without any lookup
        ipaddress.ip_address(host.split("%")[0])
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except ValueError:
        pass
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc
        finally:
            _lookups.release()
            done.set()

    if not _lookups.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise OSError(f"cannot resolve {host}: {MAX_LOOKUPS} lookups are already running "
                      "(a resolver that does not answer?)")
    try:
        threading.Thread(target=lookup, name="loom-resolve", daemon=True).start()
    except BaseException:
        _lookups.release()
        raise
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"resolving {host} did not finish before the deadline")
    if "error" in box:
        raise box["error"]
    infos: list[Any] = box["infos"]
    return infos


def resolve(host: str, port: int, cap: HttpCapability, deadline: float | None = None) -> str:
    """Resolve `host` and refuse non-public addresses unless `allow_private` is granted."""
    try:
        infos = _getaddrinfo(host, port, deadline if deadline is not None
                             else time.monotonic() + cap.timeout_ms / 1000)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not cap.allow_private and not is_public(ipaddress.ip_address(address.split("%")[0])):
            raise errors.CapabilityDenied(
                f"{host} resolves to non-public address {address}; grant allow_private to reach it")
    return addresses[0]


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """Reads a socket with each recv bounded by the time left to an overall deadline."""

    def __init__(self, owner: _DeadlineSocket, deadline: float) -> None:
        self._owner = owner
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        sock = self._owner.sock
        sock.settimeout(_left(self._deadline))
        return sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._owner.release()
        super().close()


class _DeadlineSocket:
    """The parts of a socket http.client uses, each bounded by one overall deadline.

    Like `socket.makefile`, an open reader keeps the connection open: http.client closes
    the connection as soon as it has the headers of a `Connection: close` response, and
    hands the body over to the response's reader.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self._deadline = deadline
        self._readers = 0
        self._closed = False

    def sendall(self, data: Any) -> None:
        self.sock.settimeout(_left(self._deadline))  # sendall's timeout is for all of data
        self.sock.sendall(data)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        if "r" not in mode or "w" in mode:
            raise ValueError(f"unsupported makefile mode {mode!r}")
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self, self._deadline))

    def release(self) -> None:
        self._readers -= 1
        self._close_when_unused()

    def close(self) -> None:
        self._closed = True
        self._close_when_unused()

    def _close_when_unused(self) -> None:
        if self._closed and self._readers <= 0:
            self.sock.close()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, deadline: float) -> None:
        super().__init__(host, port, timeout=_left(deadline))
        self._address = address
        self._deadline = deadline

    def _open(self) -> socket.socket:
        return socket.create_connection((self._address, self.port), _left(self._deadline))

    def connect(self) -> None:
        self.sock = _DeadlineSocket(self._open(), self._deadline)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        sock = self._open()
        try:
            sock.settimeout(_left(self._deadline))  # the handshake is bounded too
            tls = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(tls, self._deadline)


def perform(request: dict[str, Any], cap: HttpCapability, *, idempotency_key: str | None,
            timeout_s: float) -> dict[str, Any]:
    """Run one request. Policy violations raise CapabilityDenied; network trouble is returned.

    `timeout_s` is the whole request's budget: resolving, connecting, sending and reading
    the complete response all finish within it, or the request fails with
    `host_call_failed` ("timed out").
    """
    started = time.monotonic()
    deadline = started + max(0.0, timeout_s)
    method = str(request.get("method", "GET")).upper()
    if method not in METHODS:
        raise errors.CapabilityDenied(f"HTTP method {method!r} is not allowed")
    scheme, host, port, path = check_url(str(request.get("url", "")), cap)
    given, body = request.get("headers") or {}, request.get("body")
    if not isinstance(given, dict) or not (body is None or isinstance(body, str)):
        what = "headers must be an object" if not isinstance(given, dict) else \
            "body must be a string (encode JSON yourself)"
        return {"ok": False, "error": {"code": "bad_request", "message": what}}
    for k, v in given.items():  # the value is never echoed: it may hold a secret
        if not _TOKEN.fullmatch(str(k)) or _BAD_VALUE.search(str(v)):
            return {"ok": False, "error": {"code": "bad_request", "message": (
                f"header {str(k)[:64]!r}: names are tokens, and values hold no CR, LF or NUL "
                "and only Latin-1 characters")}}
    headers = {str(k): str(v) for k, v in given.items()
               if str(k).lower() not in DROPPED_HEADERS}
    headers.setdefault("User-Agent", "loom-activity")
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    payload = body.encode() if body is not None else None
    watch = observer
    if watch is None:
        return _exchange(method, scheme, host, port, path, headers, payload, cap, deadline,
                         started, timeout_s)
    with watch(method, f"{scheme}://{host}:{port}{path.split('?', 1)[0]}", headers) as seen:
        answer = _exchange(method, scheme, host, port, path, headers, payload, cap, deadline,
                           started, timeout_s)
        seen(answer)
        return answer


def _exchange(method: str, scheme: str, host: str, port: int, path: str,
              headers: dict[str, str], payload: bytes | None, cap: HttpCapability,
              deadline: float, started: float, timeout_s: float) -> dict[str, Any]:
    conn_type = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    try:
        conn = conn_type(host, port, resolve(host, port, cap, deadline), deadline)
    except OSError as exc:
        return _failed(exc, started, timeout_s)
    resp: http.client.HTTPResponse | None = None
    try:
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        if sum(len(k) + len(v) + 4 for k, v in resp.getheaders()) > MAX_RESPONSE_HEADER_BYTES:
            return {"ok": False, "error": {
                "code": "response_too_large",
                "message": f"response headers exceed {MAX_RESPONSE_HEADER_BYTES} bytes"}}
        data = resp.read(cap.max_response_bytes + 1)
        if len(data) > cap.max_response_bytes:
            return {"ok": False, "error": {
                "code": "response_too_large",
                "message": f"response exceeds max_response_bytes={cap.max_response_bytes}"}}
        return {"ok": True, "status": resp.status,
                "headers": {k.lower(): v for k, v in resp.getheaders()},
                "body": data.decode("utf-8", errors="replace")}
    except (OSError, http.client.HTTPException) as exc:
        return _failed(exc, started, timeout_s)
    finally:
        if resp is not None:
            resp.close()
        conn.close()


def _failed(exc: BaseException, started: float, timeout_s: float) -> dict[str, Any]:
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        message = (f"timed out after {(time.monotonic() - started) * 1000:.0f} ms (the "
                   f"request's budget was {timeout_s * 1000:.0f} ms: the activity's remaining "
                   "time, host_call_timeout_ms or the http timeout_ms, whichever is least)")
    elif type(exc) is OSError and len(exc.args) == 1:  # our own message, e.g. from resolve
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return {"ok": False, "error": {"code": "host_call_failed", "message": message}}
