"""Outbound HTTP for guests: allowlist by (scheme, host, port), no private addresses unless
granted, connection pinned to the vetted address, bounded time and response size."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from runtime import errors
from schemas.manifest import HttpCapability

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
DROPPED_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "upgrade",
                   "idempotency-key", "proxy-authorization", "te", "trailer"}


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


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


def resolve(host: str, port: int, cap: HttpCapability) -> str:
    """Resolve `host` and refuse non-public addresses unless `allow_private` is granted."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not cap.allow_private and not is_public(ipaddress.ip_address(address.split("%")[0])):
            raise errors.CapabilityDenied(
                f"{host} resolves to non-public address {address}; grant allow_private to reach it")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def perform(request: dict[str, Any], cap: HttpCapability, *, idempotency_key: str | None,
            timeout_s: float) -> dict[str, Any]:
    """Run one request. Policy violations raise CapabilityDenied; network trouble is returned."""
    method = str(request.get("method", "GET")).upper()
    if method not in METHODS:
        raise errors.CapabilityDenied(f"HTTP method {method!r} is not allowed")
    scheme, host, port, path = check_url(str(request.get("url", "")), cap)
    headers = {str(k): str(v) for k, v in dict(request.get("headers") or {}).items()
               if str(k).lower() not in DROPPED_HEADERS}
    headers.setdefault("User-Agent", "loom-activity")
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    body = request.get("body")
    payload = body.encode() if isinstance(body, str) else None
    conn_type = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    try:
        conn = conn_type(host, port, resolve(host, port, cap), timeout_s)
    except OSError as exc:
        return {"ok": False, "error": {"code": "host_call_failed", "message": str(exc)}}
    try:
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read(cap.max_response_bytes + 1)
        if len(data) > cap.max_response_bytes:
            return {"ok": False, "error": {
                "code": "response_too_large",
                "message": f"response exceeds max_response_bytes={cap.max_response_bytes}"}}
        return {"ok": True, "status": resp.status,
                "headers": {k.lower(): v for k, v in resp.getheaders()},
                "body": data.decode("utf-8", errors="replace")}
    except (OSError, http.client.HTTPException) as exc:
        return {"ok": False, "error": {"code": "host_call_failed",
                                       "message": f"{type(exc).__name__}: {exc}"}}
    finally:
        conn.close()
