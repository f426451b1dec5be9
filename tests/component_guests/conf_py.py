"""Conformance and abuse guest (component-v1, Python): `op` picks what it does."""

import os
from typing import Any

import loom

count = 0


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


def run(req: dict[str, Any]) -> dict[str, Any]:
    global count
    op = req["op"]
    if op == "echo":
        return req
    if op == "loop":
        while True:
            pass
    if op == "grow":
        chunks = []
        while True:
            chunks.append(bytearray(1 << 20))
    if op == "recurse":
        return {"n": _recurse(0)}
    if op == "open":
        with open(req.get("path", "/etc/passwd")) as f:
            return {"data": f.read()}
    if op == "environ":
        return {"environ": dict(os.environ), "home": os.environ["HOME"]}
    if op == "socket":
        import socket

        with socket.create_connection(("127.0.0.1", int(req.get("port", 80))), timeout=1):
            return {"connected": True}
    if op == "time":
        import time

        return {"time": time.time(), "monotonic_ns": time.monotonic_ns()}
    if op == "random":
        import random

        return {"urandom": os.urandom(16).hex(), "random": random.random()}
    if op == "raise":
        raise ValueError("x" * int(req.get("size", 100_000)))
    if op == "output":
        return {"data": "x" * int(req["size"])}
    if op == "fail":
        raise loom.ActivityError("busy, try again", code="busy", retryable=True)
    if op == "secret":
        return {"value": loom.secret(req["name"])}
    if op == "env":
        return {"value": loom.env(req["name"])}
    if op == "log":
        loom.log("hello from python", level="info", n=1)
        return {}
    if op == "key":
        return {"key": loom.idempotency_key()}
    if op == "http":  # the host's answer; ok:false (network, its deadline) is a typed error
        answer = loom.http(req.get("method", "GET"), req["url"], headers=req.get("headers"),
                           body=req.get("body"))
        if not answer["ok"]:
            error = answer["error"]
            raise loom.ActivityError(error["message"], code=error["code"], retryable=True)
        return {"status": answer["status"], "body": answer["body"]}
    if op == "counter":
        count += 1
        return {"count": count}
    if op == "flaky":  # busy (retryable) until the `succeed_at`-th call of this instance
        count += 1
        if count < int(req["succeed_at"]):
            raise loom.ActivityError(f"busy (call {count})", code="busy", retryable=True)
        return {"calls": count, "key": loom.idempotency_key(), "total": req.get("total", 0)}
    raise loom.ActivityError(f"unknown op {op!r}", code="bad_op")
