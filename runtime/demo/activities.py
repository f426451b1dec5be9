"""`make run`: the embedded default end to end, no servers.

Uploads the sample activities from activities/build to the local blob folder, invokes
each one, and shows what the sandbox refuses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.demo import demo_settings
from runtime.executor import Executor

BUILD = Path(__file__).resolve().parents[2] / "activities" / "build"


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"hello": "from a loopback server", "path": self.path,
                           "idempotency_key": self.headers.get("Idempotency-Key")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def loopback_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _manifest(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((BUILD / f"{name}.manifest.json").read_text())
    return loaded


def _show(title: str, call: Callable[[], Any]) -> None:
    print(f"\n== {title}")
    try:
        result = call()
    except errors.LoomError as exc:
        print(f"   refused as expected -> {type(exc).__name__} [{exc.code.value}, "
              f"retryable={exc.retryable}]: {exc.message}")
        return
    print("   " + json.dumps(result.output, ensure_ascii=False)[:300])
    fuel = f", fuel {result.fuel_used:,}" if result.fuel_used is not None else ""
    print(f"   ({result.duration_ms:.2f} ms, {result.memory_bytes // 1024} KiB memory{fuel}"
          f"{', warm instance' if result.reused_instance else ''})")
    for entry in result.logs:
        print(f"   guest log [{entry['level']}] {entry['message']}")


def main() -> int:
    if not (BUILD / "echo.wasm").exists():
        print("activities are not built: run `make activities` (make run does it for you)")
        return 1
    settings = demo_settings()
    print(f"Loom demo on the embedded default: blobs in {settings.resolved_blob_url}, "
          f"compiled cache in {settings.resolved_cache_dir}")
    secrets = {"GREETING_TOKEN": "tok-demo-4242"}
    with Executor(settings, secrets=secrets) as ex, loopback_server() as port:
        print("\n== upload")
        for name in ("echo", "wordfreq", "greet_secret", "wasi_upper", "http_fetch"):
            manifest = _manifest(name)
            if name == "http_fetch":
                # The sample allows https://example.com; this machine has no internet, so the
                # demo publishes a variant that grants exactly one loopback port.
                manifest["version"] = "1.0.0-local"
                manifest["capabilities"]["http"] = {
                    "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}],
                    "allow_private": True}
                manifest.pop("sha256", None)
            up = ex.upload((BUILD / f"{name}.wasm").read_bytes(), manifest)
            print(f"   {up.manifest.ref:<28} {'stored' if up.created else 'already stored'}")

        text = ("It was the best of times, it was the worst of times, it was the age of "
                "wisdom, it was the age of foolishness")
        _show("echo", lambda: ex.execute("echo", {"hello": "world", "n": 1}))
        _show("echo again (warm, pooled instance)", lambda: ex.execute("echo", {"n": 2}))
        _show("wordfreq", lambda: ex.execute("wordfreq", {"text": text, "top": 3}))
        _show("greet_secret (reads a granted secret)",
              lambda: ex.execute("greet_secret", {"name": "Ada"}))
        _show("wasi_upper (an unmodified WASI command program)",
              lambda: ex.execute("wasi_upper", {"text": "sandboxed and durable"}))
        _show("http_fetch (HTTP capability, loopback granted explicitly)",
              lambda: ex.execute("http_fetch", {"url": f"http://127.0.0.1:{port}/hi"},
                                 version="1.0.0-local", idempotency_key="demo:order-1:0"))
        print("\n-- what the sandbox refuses --")
        _show("http_fetch to a host not on the allowlist",
              lambda: ex.execute("http_fetch", {"url": "http://10.0.0.1/"},
                                 version="1.0.0-local"))
        _show("wordfreq with invalid input (never reaches the guest)",
              lambda: ex.execute("wordfreq", {"text": 42}))
        _show("wasi_upper asked to fail (exit code + stderr)",
              lambda: ex.execute("wasi_upper", {"text": "x", "fail": True}))
        stats = ex.pool.stats
        cache = ex.modules.stats
        print(f"\npool: {stats.created} instances created, {stats.reused} reuses, "
              f"{stats.retired} retired; module cache: {cache.compiles} compiled, "
              f"{cache.disk_hits} from disk, {cache.memory_hits} from memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
