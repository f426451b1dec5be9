"""A real `loom serve` (uvicorn) on a free loopback port, in its own process, for `make
studio`, the tests and the benchmarks; keys are made with the real `loom keys create`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
LOOM = str(Path(sys.executable).with_name("loom"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, home: Path, *, modules: tuple[str, ...] = ("runtime.service.demo_actors",),
                 env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LOOM_HOME": str(home), **(env or {})}
        args = [LOOM, "serve", "--port", str(self.port)]
        for m in modules:
            args += ["--module", m]
        self.log = open(home / f"serve-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loom serve did not start: {self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        self.log.flush()
        return (self.home / f"serve-{self.port}.log").read_text(errors="replace")

    def key(self, tenant: str, scopes: str = "read,invoke,write") -> str:
        out = subprocess.run([LOOM, "keys", "create", "--tenant", tenant, "--scopes", scopes],
                             cwd=ROOT, env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def upload(client: httpx.Client, name: str, as_name: str | None = None) -> Any:
    import json

    build = ROOT / "activities" / "build"
    manifest = json.loads((build / f"{name}.manifest.json").read_text())
    if as_name:
        manifest["name"] = as_name
    return client.post("/v1/activities", files={
        "wasm": ("a.wasm", (build / f"{name}.wasm").read_bytes(), "application/wasm"),
        "manifest": ("m.json", json.dumps(manifest).encode(), "application/json")})
