"""`make studio`: a `loom serve` with data in it (a key, the sample activities, an actor with
a journal, a workflow instance), printing the URL and the key. Ctrl-C stops it."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> int:
    import signal
    import tempfile

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a terminated demo stops its server too

    from runtime.service.harness import Server, upload

    home = Path(tempfile.mkdtemp(prefix="loom-studio-"))
    server = Server(home)
    try:
        key = server.key("demo", "read,invoke,write")
        c = server.client(key)
        for name in ("echo", "slugify", "wordfreq", "invoice_total"):
            upload(c, name)
        for n in range(3):
            c.post("/v1/actors/counter/c1/ask/add", json={"payload": {"n": n}})
        c.post("/v1/actors/counter/c1/ask/echo", json={"payload": {"hello": "studio"}})
        c.post("/v1/actors/counter/c1/ask/boom", json={})
        c.post("/v1/actors/counter/c2/send/park", json={})  # parked on an event
        print(f"Studio: {server.url}/studio/   key: {key}\n(LOOM_HOME={home}; Ctrl-C stops)",
              flush=True)
        while server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
