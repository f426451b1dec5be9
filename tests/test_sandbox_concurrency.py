"""Under concurrency every failure is the caller's own.

wasmtime-py keeps a Python host function's exception in one process-wide variable and
re-raises it from whichever thread next fails inside its wrappers (for example a failing
`InstancePre.instantiate`): tenant B, whose module cannot be instantiated under its memory
limit, used to receive tenant A's CapabilityDenied now and then. The executor instantiates
and calls through the C API and keeps host-function errors on the calling store's session.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import guests
from guests import manifest

from runtime import errors

THREADS = 8
CALLS = 700
MiB = 1024 * 1024


def test_every_error_is_the_callers_own(tmp_path: Path) -> None:
    with guests.executor_at(tmp_path / "home", secrets={"TOKEN": "s3cret"}) as ex:
        ex.upload(guests.host_proxy(), manifest("prober", reuse_instances=True))
        ex.upload(guests.big_initial_memory(pages=64),
                  manifest("fat", limits={"memory_bytes": 2 * MiB}))
        expected = {"prober": errors.CapabilityDenied, "fat": errors.MemoryLimitExceeded}
        outcomes: Counter[tuple[str, str]] = Counter()
        wrong: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def tenant(i: int) -> None:
            name = "prober" if i % 2 == 0 else "fat"
            key_prefix = f"tenant{i}"
            start.wait()
            for n in range(CALLS):
                key = f"{key_prefix}:{n}"
                try:
                    ex.execute(name, {"op": "secret", "name": "TOKEN"}, tenant=key_prefix,
                               idempotency_key=key)
                    outcome, ok = "no error", False
                except errors.LoomError as exc:
                    outcome = type(exc).__name__
                    ok = (type(exc) is expected[name] and exc.activity == name
                          and exc.idempotency_key == key)
                    if ok and name == "prober":
                        ok = "TOKEN" in exc.message and "not granted" in exc.message
                with lock:
                    outcomes[(name, outcome)] += 1
                    if not ok:
                        wrong.append(f"{name} {key}: {outcome}")

        threads = [threading.Thread(target=tenant, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert wrong == [], f"{len(wrong)} foreign errors, e.g. {wrong[:3]}; all: {dict(outcomes)}"
    assert outcomes == {("prober", "CapabilityDenied"): THREADS // 2 * CALLS,
                        ("fat", "MemoryLimitExceeded"): THREADS // 2 * CALLS}
