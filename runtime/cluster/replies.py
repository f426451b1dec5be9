"""Answers that cross processes at once: the worker that completes an asked message tells the
asker's process (Redis pub/sub, channel `<prefix>:replies:<owner>`), which then reads the
durable outcome from the journal instead of waiting for its next poll.

A note is sent only after the outcome is durable, and it carries no result: the journal
stays the only source. Pub/sub may drop a note (a reconnect, a Redis restart); the asker's
journal poll (50 ms doubling to 1 s) stays the safety net, so a lost note costs latency,
never an answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import redis

log = logging.getLogger("loom.cluster")


class Replies:
    def __init__(self, url: str, owner: str, *, prefix: str = "loom") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self.channel = self.channel_of(owner)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def channel_of(self, owner: str) -> str:
        return f"{self.prefix}:replies:{owner}"

    def publish(self, owner: str, actor: str, msg_id: str) -> None:
        """Tell `owner`'s process that (actor, msg_id) has its outcome in the journal."""
        try:
            self.client.publish(self.channel_of(owner), f"{actor}\n{msg_id}")
        except redis.RedisError as exc:  # the asker's poll will find it
            log.debug("reply note to %s lost: %s", owner, exc)

    def start(self, on_done: Callable[[str, str], None]) -> None:
        """Call `on_done(actor, msg_id)` (on a thread of its own) for every note to us."""
        self._thread = threading.Thread(target=self._listen, args=(on_done,), daemon=True,
                                        name="loom-replies")
        self._thread.start()

    def _listen(self, on_done: Callable[[str, str], None]) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self.client.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    note = pubsub.get_message(timeout=0.5)
                    if note is not None and note.get("type") == "message":
                        data = note["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        actor, _, msg_id = text.partition("\n")
                        on_done(actor, msg_id)
                pubsub.close()
            except (redis.RedisError, OSError) as exc:  # reconnect; polls cover the gap
                log.debug("reply channel: %s", exc)
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(Exception):
            self.client.close()
