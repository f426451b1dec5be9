"""The durable order actor on the embedded default (SQLite journal), against a local
payment/shipping provider that deduplicates by Idempotency-Key and logs every real effect."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from runtime import errors
from runtime.actors import ActorRuntime
from runtime.demo import demo_settings
from runtime.demo.activities import BUILD
from runtime.demo.order_actor import Order
from runtime.executor import Executor
from runtime.journal import open_journal
from wdl import load, run_workflow


class Provider:
    """Payments + shipping: performs each effect once per Idempotency-Key."""

    def __init__(self) -> None:
        self.effects: list[tuple[str, str, Any]] = []
        self.duplicates = 0
        self._seen: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def handle(self, path: str, key: str, body: Any) -> tuple[int, bytes]:
        with self._lock:
            if key in self._seen:
                self.duplicates += 1
                return 200, self._seen[key]
            if isinstance(body, dict) and body.get("address") == "nowhere":
                return 422, b'{"error": "cannot ship to nowhere"}'
            self.effects.append((path, key, body))
            reply = {"id": f"{path.strip('/').replace('/', '-')}-{len(self.effects)}", "ok": True}
            data = json.dumps(reply).encode()
            self._seen[key] = data
            return 200, data


@contextmanager
def serve(provider: Provider) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            status, data = provider.handle(self.path, self.headers.get("Idempotency-Key", ""),
                                           json.loads(raw or b"null"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _upload(ex: Executor, port: int) -> None:
    for name in ("price_order", "http_post"):
        manifest = json.loads((BUILD / f"{name}.manifest.json").read_text())
        if name == "http_post":  # grant exactly the local provider
            manifest["version"] = "1.0.0-demo"
            manifest["capabilities"]["http"] = {
                "allow": [{"scheme": "http", "host": "127.0.0.1", "port": port}],
                "allow_private": True}
            manifest.pop("sha256", None)
        ex.upload((BUILD / f"{name}.wasm").read_bytes(), manifest)


async def _run(ex: Executor, base: str, provider: Provider) -> None:
    settings = demo_settings()
    journal = open_journal(settings)
    items = [{"sku": "tea", "qty": 2, "unit_cents": 450},
             {"sku": "mug", "qty": 1, "unit_cents": 1200}]
    async with ActorRuntime(journal, ex, poll_interval_s=0.01) as rt:
        rt.register(Order)
        run_id = f"{int(rt.clock())}"
        orders: dict[str, dict[str, Any]] = {
            f"o{run_id}-happy": {"items": items, "discount_pct": 10, "address": "1 Loom Lane"},
            f"o{run_id}-unshippable": {"items": items, "address": "nowhere"},
            f"o{run_id}-greedy": {"items": items, "discount_pct": 80, "address": "2 Loom Lane"},
        }
        await rt.signal(f"order/o{run_id}-happy", "delivered", {"signed_by": "Ada"})
        for oid, order in orders.items():
            shown = {k: v for k, v in order.items() if k != "items"}
            print(f"\n== order/{oid}: {json.dumps(shown)}")
            try:
                result = await rt.ask(f"order/{oid}", "place",
                                      {**order, "provider": base, "wait_s": 0.5}, timeout=30)
                print(f"   -> {result['status']}, total {result['total_cents'] / 100:.2f}, "
                      f"charge {result['charge']['id']}, shipment {result['shipment']['id']}")
            except errors.LoomError as exc:
                print(f"   -> {type(exc).__name__}: {exc.message}")
        happy = f"order/o{run_id}-happy"
        print(f"\n== journal of {happy} (LOOM_HOME={settings.home} .venv/bin/loom actor "
              f"journal order o{run_id}-happy)")
        for c in await journal.read(happy):
            ops = ", ".join(f"{e['op']} {e['name']}" for e in c.get("events", []))
            print(f"   #{c['seq']} {c.get('kind', 'step'):<9} {ops}")
        wf = load(BUILD.parents[1] / "wdl" / "examples" / "shipping_saga.json")
        print(f"\n== WDL workflow {wf.ref} (wdl/examples/shipping_saga.json): carrier B "
              "refuses, carrier A's booking is cancelled")
        outcome = await run_workflow(
            rt, wf, {"provider": base, "order": f"o{run_id}-wdl", "address": "nowhere"},
            instance=f"saga-{run_id}", timeout=30)
        print(f"   -> {json.dumps(outcome)}")
        unship = f"order/o{run_id}-unshippable"
        print(f"\n== journal of {unship}: the saga refunded the charge")
        for c in await journal.read(unship):
            ops = ", ".join(f"{e['op']} {e['name']}" for e in c.get("events", []))
            print(f"   #{c['seq']} {c.get('kind', 'step'):<9} {ops}")
    await journal.close()
    print("\n== provider: every real effect, once, with its idempotency key")
    for path, key, _ in provider.effects:
        print(f"   {path:<14} {key}")
    print(f"   ({provider.duplicates} duplicate requests answered from the provider's log)")


def main() -> int:
    # Guest logs go to the `loom.activity.*` loggers; the demo prints its own summary instead.
    quiet = logging.getLogger("loom.activity")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    provider = Provider()
    with serve(provider) as base, Executor(demo_settings()) as ex:
        print("\n\nDurable actors: an order = price -> charge -> ship (saga) -> wait for delivery")
        _upload(ex, int(base.rsplit(":", 1)[1]))
        asyncio.run(_run(ex, base, provider))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
