"""Real servers for the tests, on free loopback ports: Azurite (blob), a Cosmos DB SQL-API
server, Redis, and an in-process HTTP server that records requests.

From pytest: see the session fixtures in conftest.py. As a script:

    python tests/servers.py [azurite] [cosmos] [redis] [http]

starts the named servers (default: all), prints `export LOOM_...=...` lines on stdout (notes
go to stderr), waits for Ctrl-C / SIGTERM and stops them. It keeps running, so start it in
another terminal (or `python tests/servers.py > env.sh &`, wait, then `. env.sh`).

The Node servers come from tests/emulators (`bash tests/emulators/install.sh`, or `make test`);
Redis is the system `redis-server`. Logs and data live in a temp dir per server that is
removed on stop (set LOOM_KEEP_SERVER_LOGS=1 to keep it).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
EMULATORS = HERE / "emulators"
NODE_MODULES = EMULATORS / "node_modules"
INSTALL_HINT = "run `make test` or `bash tests/emulators/install.sh` to install the test servers"
HOST = "127.0.0.1"

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
COSMOS_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
COSMOS_PACKAGE = NODE_MODULES / "@vercel" / "cosmosdb-server"
COSMOS_CERT = COSMOS_PACKAGE / "cert.pem"
"""The Cosmos server's own self-signed certificate (CN=cosmosdb, no SAN, expired 2021-01-28):
clients still need `connection_verify=False`; pointing SSL_CERT_FILE at it only spares
requests from loading the full CA bundle on every (non-keep-alive) connection."""


class ServerError(RuntimeError):
    """A test server could not be started."""


class ServerMissing(ServerError):
    """A binary a test server needs is not installed."""


def free_port() -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (for 'unreachable endpoint' tests)."""
    return free_port()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so a SIGKILLed or
    os._exit()ed test run (pytest-timeout) doesn't leak servers."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ProcessServer:
    """A server in a child process, listening on `port`. Subclasses set `name` and `command()`."""

    name = "server"
    ready_marker = ""
    """Text the server logs once it listens. Required besides an accepting port, so that a
    port grabbed by someone else in the meantime isn't mistaken for ours."""
    start_timeout = 60.0
    stop_grace = 5.0

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.log_path: Path | None = None
        self.start_seconds = 0.0
        self._log_offset = 0

    # -- subclass hooks
    def command(self, port: int, workdir: Path) -> list[str]:
        raise NotImplementedError

    def check_installed(self) -> None:
        pass

    def env(self) -> dict[str, str]:
        """`LOOM_*` settings for clients of this server."""
        return {}

    # -- lifecycle
    def start(self) -> Self:
        if self.proc is not None:
            return self
        self.check_installed()
        self.dir = Path(tempfile.mkdtemp(prefix=f"loom-{self.name}-"))
        self.log_path = self.dir / f"{self.name}.log"
        t0 = time.monotonic()
        for attempt in range(3):  # another process may grab the free port before we bind it
            self.port = free_port()
            data = self.dir / "data"
            data.mkdir(exist_ok=True)
            argv = self.command(self.port, data)
            with open(self.log_path, "ab") as log:
                log.write(f"$ {shlex.join(argv)}\n".encode())
                log.flush()
                self._log_offset = log.tell()
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.dir, start_new_session=True,
                    # PDEATHSIG fires when the *thread* that forked exits, so only tie the
                    # server's life to ours when that thread is the main one.
                    preexec_fn=_die_with_parent
                    if threading.current_thread() is threading.main_thread() else None,
                )
            try:
                self._wait_ready(t0)
                break
            except ServerError:
                exited = self.proc.poll() is not None
                self._terminate()
                logged = self._attempt_log()
                port_taken = "EADDRINUSE" in logged or "Address already in use" in logged
                if not exited or not port_taken or attempt == 2:
                    raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self.proc is not None and self.log_path is not None
        while True:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.proc.returncode} before listening on "
                    f"{HOST}:{self.port}; log {self.log_path}:\n{_tail(self.log_path)}")
            if self.ready_marker in self._attempt_log():
                with contextlib.suppress(OSError), \
                        socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            if time.monotonic() - t0 > self.start_timeout:
                raise ServerError(
                    f"{self.name} did not listen on {HOST}:{self.port} within "
                    f"{self.start_timeout:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def _attempt_log(self) -> str:
        """What the current process has logged so far."""
        assert self.log_path is not None
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: pgid == pid
        try:
            proc.wait(self.stop_grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        self._terminate()
        if self.dir is not None and not os.environ.get("LOOM_KEEP_SERVER_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines) if self.log_path else "(not started)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {HOST}:{self.port} pid={self.proc and self.proc.pid}>"


def _node_bin(script: Path) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise ServerMissing(f"`node` is not on PATH; install Node.js >= 20, then {INSTALL_HINT}")
    if not script.is_file():
        raise ServerMissing(f"{script} is missing; {INSTALL_HINT}")
    return [node, str(script)]


class Azurite(ProcessServer):
    """Azurite's blob service with on-disk storage in the temp dir."""

    name = "azurite"
    ready_marker = "successfully listens on"
    script = NODE_MODULES / "azurite" / "dist" / "src" / "blob" / "main.js"

    def check_installed(self) -> None:
        _node_bin(self.script)

    def command(self, port: int, workdir: Path) -> list[str]:
        return [*_node_bin(self.script), "--blobHost", HOST, "--blobPort", str(port),
                "--location", str(workdir), "--disableTelemetry", "--skipApiVersionCheck",
                "--loose", "--silent"]

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_endpoint};")

    def env(self) -> dict[str, str]:
        return {"LOOM_BLOB_URL": "azure://loom",
                "LOOM_AZURE_STORAGE_CONNECTION_STRING": self.connection_string}


class CosmosServer(ProcessServer):
    """@vercel/cosmosdb-server over HTTPS with its bundled self-signed cert (in-memory data)."""

    name = "cosmos"
    ready_marker = "Ready to accept HTTPS connections"
    script = COSMOS_PACKAGE / "lib" / "cli.js"
    key = COSMOS_KEY
    cert_path = COSMOS_CERT

    def check_installed(self) -> None:
        _node_bin(self.script)
        if not self.cert_path.is_file():
            raise ServerMissing(f"{self.cert_path} is missing; {INSTALL_HINT}")

    def command(self, port: int, workdir: Path) -> list[str]:
        return [*_node_bin(self.script), "--port", str(port), "--host", HOST]

    @property
    def endpoint(self) -> str:
        return f"https://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        # The emulator's certificate is self-signed and expired: loopback use only.
        return {"LOOM_JOURNAL_URL": self.endpoint.replace("https://", "cosmos://", 1),
                "LOOM_COSMOS_KEY": self.key, "LOOM_COSMOS_VERIFY_TLS": "false",
                "SSL_CERT_FILE": str(self.cert_path)}


class RedisServer(ProcessServer):
    """A throwaway redis-server: no persistence, loopback only."""

    name = "redis"
    ready_marker = "Ready to accept connections"

    def check_installed(self) -> None:
        if shutil.which("redis-server") is None:
            raise ServerMissing(f"`redis-server` is not on PATH; {INSTALL_HINT}")

    def command(self, port: int, workdir: Path) -> list[str]:
        exe = shutil.which("redis-server") or "redis-server"
        return [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(workdir)]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def env(self) -> dict[str, str]:
        return {"LOOM_BREAKER_URL": self.url}


# ---------------------------------------------------------------- in-process HTTP server


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # with the query string, as sent
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes
    client: tuple[str, int]
    at: float = field(default_factory=time.time)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


@dataclass
class Response:
    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering


Handler = Callable[[RecordedRequest], Response]
BIG_SIZE = 8 * 1024 * 1024


def _big_body(size: int) -> bytes:
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def _builtin(req: RecordedRequest) -> Response | None:
    """Routes that always exist (unless overridden):

    GET  /hello            200 text "hello from loopback"
    ANY  /echo             200 JSON {method, path, headers, body} of the request
    GET  /big?size=N       200, N bytes (default 8 MiB) of the repeating pattern 00..ff
    GET  /slow?s=N         sleeps N seconds (default 5), then 200 "slow"
    ANY  /status/<n>       status n, body "status <n>"
    GET  /redirect?to=URL  302 to URL (default /hello)
    """
    path = urlsplit(req.path).path
    q = req.query
    if path == "/hello":
        return Response(200, "hello from loopback", {"Content-Type": "text/plain; charset=utf-8"})
    if path == "/echo":
        body = json.dumps({"method": req.method, "path": req.path, "headers": req.headers,
                           "body": req.body.decode("utf-8", "replace")})
        return Response(200, body, {"Content-Type": "application/json"})
    if path == "/big":
        size = int(q.get("size", [str(BIG_SIZE)])[0])
        return Response(200, _big_body(size), {"Content-Type": "application/octet-stream"})
    if path == "/slow":
        return Response(200, "slow", {"Content-Type": "text/plain"},
                        delay=float(q.get("s", ["5"])[0]))
    if path.startswith("/status/") and path[len("/status/"):].isdigit():
        n = int(path[len("/status/"):])
        return Response(n, f"status {n}", {"Content-Type": "text/plain"})
    if path == "/redirect":
        return Response(302, "", {"Location": q.get("to", ["/hello"])[0]})
    return None


class HttpTestServer:
    """A threading HTTP/1.1 server in this process that records every request.

    `route(method, path, response_or_handler)` adds or overrides a route (exact path, without
    query; method "*" matches any); `reset()` forgets requests and custom routes.
    """

    name = "http"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._routes: dict[tuple[str, str], Response | Handler] = {}
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.start_seconds = 0.0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def route(self, method: str, path: str, response: Response | Handler) -> None:
        with self._lock:
            self._routes[(method.upper(), path)] = response

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._routes.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.requests

    def env(self) -> dict[str, str]:
        return {"LOOM_TEST_HTTP_URL": self.base_url}

    def _record(self, req: RecordedRequest) -> Response:
        with self._lock:
            self._requests.append(req)
            path = urlsplit(req.path).path
            custom = self._routes.get((req.method, path)) or self._routes.get(("*", path))
        if custom is None:
            return _builtin(req) or Response(404, "no such route", {"Content-Type": "text/plain"})
        return custom(req) if callable(custom) else custom

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        t0 = time.monotonic()
        owner = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                req = RecordedRequest(
                    method=self.command, path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self._body(), client=(self.client_address[0], self.client_address[1]))
                try:
                    resp = owner._record(req)
                except Exception as e:  # a broken custom handler must not hang the client
                    resp = Response(500, f"test handler failed: {e!r}")
                if resp.delay:
                    time.sleep(resp.delay)
                body = resp.body.encode() if isinstance(resp.body, str) else resp.body
                try:
                    self.send_response(resp.status)
                    for k, v in resp.headers.items():
                        self.send_header(k, v)
                    if not any(k.lower() == "content-length" for k in resp.headers):
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        class _Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # don't let a /slow request hold up stop()

        self._httpd = _Server((HOST, 0), _Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="loom-http-test-server", daemon=True)
        self._thread.start()
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<HttpTestServer {self.base_url}>"


# ---------------------------------------------------------------- script

Server = ProcessServer | HttpTestServer
SERVERS: dict[str, Callable[[], Server]] = {
    "azurite": Azurite, "cosmos": CosmosServer, "redis": RedisServer, "http": HttpTestServer,
}


def main(argv: list[str]) -> int:
    names = argv or list(SERVERS)
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        print(f"unknown server(s) {unknown}; choose from {list(SERVERS)}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    servers: list[Server] = []
    try:
        for s in (SERVERS[n]() for n in names):
            servers.append(s)
            s.start()
            print(f"# {s.name}: {s!r} started in {s.start_seconds:.2f}s", file=sys.stderr)
            if stop.is_set():
                break
        if not stop.is_set():
            for s in servers:
                for k, v in s.env().items():
                    print(f"export {k}={shlex.quote(v)}")
            sys.stdout.flush()
            print("# serving; Ctrl-C or SIGTERM stops", file=sys.stderr)
            while not stop.wait(1.0):
                dead = [s for s in servers if isinstance(s, ProcessServer)
                        and s.proc is not None and s.proc.poll() is not None]
                if dead:
                    for s in dead:
                        print(f"# {s.name} died:\n{s.log_tail()}", file=sys.stderr)
                    return 1
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for s in reversed(servers):
            s.stop()
        print("# stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
