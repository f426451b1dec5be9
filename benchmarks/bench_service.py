"""`make bench` key `service`: what the HTTP front door costs.

- invoke: the echo activity in-process (`Executor.execute`) vs `POST /v1/activities/echo/invoke`
  on a real `loom serve` (uvicorn, its own process, loopback, one keep-alive connection):
  p50 and p99 of each, and the difference (the API's overhead per call);
- ask: `POST /v1/actors/counter/<id>/ask/add` requests per second, one client and 8
  concurrent clients (SQLite journal, synchronous=FULL).

Merges {"service": {...}} into .loom/bench.json (other keys kept)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from service_harness import Server, upload  # noqa: E402

from runtime.executor import Executor  # noqa: E402
from runtime.settings import load_settings  # noqa: E402

N = 2000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def in_process(home: Path) -> list[float]:
    build = ROOT / "activities" / "build"
    with Executor(load_settings(home=home / "inproc")) as ex:
        ex.upload((build / "echo.wasm").read_bytes(),
                  json.loads((build / "echo.manifest.json").read_text()))
        for _ in range(200):
            ex.execute("echo", {"a": 1})
        out = []
        for _ in range(N):
            t = time.perf_counter()
            ex.execute("echo", {"a": 1})
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="loom-bench-service-"))
    local = in_process(home)
    (home / "srv").mkdir()
    server = Server(home / "srv", modules=("tests/service_actors.py",))
    try:
        key = server.key("bench", "read,invoke,write")
        c = server.client(key)
        upload(c, "echo")
        for _ in range(200):
            c.post("/v1/activities/echo/invoke", json={"input": {"a": 1}})
        remote = []
        for _ in range(N):
            t = time.perf_counter()
            r = c.post("/v1/activities/echo/invoke", json={"input": {"a": 1}})
            remote.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
        asks = 300
        t = time.perf_counter()
        for i in range(asks):
            c.post(f"/v1/actors/counter/a{i % 20}/ask/add", json={"payload": {"n": 1}})
        ask_1 = asks / (time.perf_counter() - t)
        clients = [server.client(key) for _ in range(8)]

        def worker(k: int) -> None:
            for i in range(asks // 8):
                clients[k].post(f"/v1/actors/counter/p{k}-{i % 5}/ask/add",
                                json={"payload": {"n": 1}})

        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
        ask_8 = (asks // 8 * 8) / (time.perf_counter() - t)
    finally:
        server.stop()
    figures = {
        "invoke_in_process_p50_ms": round(statistics.median(local), 3),
        "invoke_in_process_p99_ms": round(pct(local, 0.99), 3),
        "invoke_http_p50_ms": round(statistics.median(remote), 3),
        "invoke_http_p99_ms": round(pct(remote, 0.99), 3),
        "api_overhead_p50_ms": round(statistics.median(remote) - statistics.median(local), 3),
        "api_overhead_p99_ms": round(pct(remote, 0.99) - pct(local, 0.99), 3),
        "ask_http_per_s_1_client": round(ask_1, 1),
        "ask_http_per_s_8_clients": round(ask_8, 1),
    }
    print("service (echo invoke, ms; ask requests/s over HTTP)")
    for k, v in figures.items():
        print(f"  {k:<28} {v}")
    path = ROOT / ".loom" / "bench.json"
    path.parent.mkdir(exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["service"] = figures
    path.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
