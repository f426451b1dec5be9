"""What an activation needs from the runtime that hosts it: a handful of callbacks.

The runtime implements it for real; `replay.py` implements it so that every effect is
refused; the simulation drives the real runtime. An activation never reaches further.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from runtime import errors
from runtime.actors.actor import ActorRef
from runtime.actors.hooks import Hooks
from runtime.journal.store import Envelope, JournalStore
from schemas.manifest import RetryPolicy

MAX_PAYLOAD_DEPTH = 128  # levels of nesting in a message payload or a run's result (the
# journal reads ~200: deeper, it would be written and then never read back)


class ActivationLost(BaseException):
    """The activation must stop now: a storage write failed, or another activation of the
    actor committed first (fenced). Not an `Exception`, so handler code and sagas never
    catch it: nothing is compensated or consumed, and the run resumes by replay."""

    def __init__(self, actor: str, cause: BaseException) -> None:
        super().__init__(f"{actor}: {type(cause).__name__}: {cause}")
        self.cause = cause


class RunPinned(Exception):
    """The actor's run in flight started under code version `version`, which this process
    cannot resume: it leaves the actor to a worker that can."""

    def __init__(self, actor: str, version: str) -> None:
        super().__init__(f"{actor}: its run in flight started under code version {version}")
        self.version = version


class Host(Protocol):
    journal: JournalStore
    code_version: str | None
    """The version new runs start under (None: unversioned)."""
    versions: frozenset[str] | None
    """The versions whose runs this process may resume (None: any)."""
    hooks: Hooks
    durable_retry_threshold_s: float
    invariants: dict[str, Any]
    draining: bool
    max_deliveries: int

    def clock(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def envelope(self, target: ActorRef, handler: str | None, payload: Any, *,
                 msg_id: str | None = None, kind: str = "call", name: str | None = None,
                 reply_to: str | None = None, sender: str | None = None,
                 deliver_at: float = 0.0, key: str | None = None) -> Envelope: ...

    async def dispatch(self, envelopes: list[Envelope]) -> None: ...

    def resolve(self, key: str, msg_id: str, result: Any,
                failure: BaseException | None) -> None: ...

    def notify(self, key: str) -> None: ...

    def answer_from(self, key: str, commit: dict[str, Any]) -> None:
        """Answer whoever waits here for the run that `commit` completed (found at load:
        the append that wrote it may have reported a failure after it landed)."""
        ...

    def reply_ready(self, asker: str, key: str, msg_id: str) -> None:
        """The outcome of a message that `asker` (a runtime's owner id) asks for is durable."""
        ...

    def settle_later(self, key: str, now: float, seen_n: int, busy: bool) -> None: ...

    def lost(self, key: str, activation: object, cause: BaseException) -> None: ...

    def committed(self, key: str) -> None: ...

    def counts_delivery(self, key: str) -> bool: ...

    def last_failure(self, key: str) -> str | None: ...

    def check_invariants(self, key: str, actor: Any, before: Any, after: Any,
                         events: list[dict[str, Any]]) -> errors.InvariantViolated | None: ...

    def tenant_of(self, key: str) -> str: ...

    async def run_activity(self, name: str, input: Any, *, version: str | None,
                           idempotency_key: str, timeout_ms: int | None,
                           tenant: str) -> Any: ...

    async def retry_policy_for(self, name: str, version: str | None,
                               tenant: str = "") -> RetryPolicy: ...

    def contained_version(self, name: str, version: str | None) -> str | None:
        """The version of activity `name` to run if, as resolved now without a storage read,
        it reaches nothing outside the process (no HTTP, no log); else None."""
        ...

    def take_resources(self, key: str) -> list[dict[str, Any]] | None: ...

    async def admit(self, name: str, tenant: str, key: str
                    ) -> Callable[[], Awaitable[None]] | None:
        """Wait until the limits admit the call; what frees its slot (None: no limit)."""
        ...
