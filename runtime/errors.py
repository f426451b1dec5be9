"""One exception hierarchy for everything Loom reports. Import as `from runtime import errors`.

Every error carries a code from `schemas.errors.ErrorCode`, says whether a retry could
help, and names the activity (name, version) and idempotency key it concerns.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import ErrorCode

__all__ = [
    "ActivityError", "ActivityFailed", "CapabilityDenied", "CircuitOpen", "ErrorCode",
    "EventTimeout", "GuestError",
    "HandlerFailed", "HostCallFailed", "InputInvalid", "InputTooLarge", "IntegrityError",
    "InvariantViolated", "JournalConflict", "LintError", "LoomError", "ManifestInvalid",
    "MemoryLimitExceeded", "ModuleInvalid", "NonDeterminismError", "NotFound", "OutOfFuel",
    "OutputInvalid", "OutputTooLarge", "SettingsInvalid", "StackOverflow", "StorageError",
    "Timeout", "Trap", "VersionConflict", "WorkflowFailed", "WorkflowInvalid",
]


class LoomError(Exception):
    """Base of every Loom error."""

    code: ErrorCode = ErrorCode.TRAP
    retryable: bool = False

    def __init__(self, message: str, *, activity: str | None = None, version: str | None = None,
                 idempotency_key: str | None = None, details: Any = None) -> None:
        self.message = message
        self.activity = activity
        self.version = version
        self.idempotency_key = idempotency_key
        self.details = details
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.activity:
            where.append(f"{self.activity}@{self.version}" if self.version else self.activity)
        if self.idempotency_key:
            where.append(f"key={self.idempotency_key}")
        prefix = f"[{self.code.value}{' ' + ' '.join(where) if where else ''}] "
        return prefix + self.message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "retryable": self.retryable,
                "activity": self.activity, "version": self.version,
                "idempotency_key": self.idempotency_key, "details": self.details}


class ActivityError(LoomError):
    """An invocation failed; subclasses say why."""


class InputInvalid(ActivityError):
    code = ErrorCode.INPUT_INVALID


class OutputInvalid(ActivityError):
    code = ErrorCode.OUTPUT_INVALID


class Timeout(ActivityError):
    code = ErrorCode.TIMEOUT
    retryable = True


class OutOfFuel(ActivityError):
    code = ErrorCode.OUT_OF_FUEL


class MemoryLimitExceeded(ActivityError):
    code = ErrorCode.MEMORY_LIMIT


class StackOverflow(ActivityError):
    code = ErrorCode.STACK_OVERFLOW


class InputTooLarge(ActivityError):
    code = ErrorCode.INPUT_TOO_LARGE


class OutputTooLarge(ActivityError):
    code = ErrorCode.OUTPUT_TOO_LARGE


class CapabilityDenied(ActivityError):
    code = ErrorCode.CAPABILITY_DENIED


class Trap(ActivityError):
    """The guest trapped for a reason not covered by a more specific error."""

    code = ErrorCode.TRAP


class GuestError(ActivityError):
    """The guest returned a structured error (core ABI) or exited non-zero (WASI)."""

    code = ErrorCode.GUEST_ERROR

    def __init__(self, message: str, *, retryable: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retryable = retryable


class HostCallFailed(ActivityError):
    code = ErrorCode.HOST_CALL_FAILED
    retryable = True


class ModuleInvalid(LoomError):
    code = ErrorCode.MODULE_INVALID


class ManifestInvalid(LoomError):
    code = ErrorCode.MANIFEST_INVALID


class NotFound(LoomError):
    code = ErrorCode.NOT_FOUND


class VersionConflict(LoomError):
    code = ErrorCode.VERSION_CONFLICT


class IntegrityError(LoomError):
    code = ErrorCode.INTEGRITY


class StorageError(LoomError):
    code = ErrorCode.STORAGE
    retryable = True


class SettingsInvalid(LoomError):
    code = ErrorCode.SETTINGS_INVALID


# -- actors and the journal ------------------------------------------------------------------

class JournalConflict(LoomError):
    """Another writer already committed this (actor, seq): this activation is stale (fenced)."""

    code = ErrorCode.JOURNAL_CONFLICT
    retryable = True


class NonDeterminismError(LoomError):
    """Replayed code asked for a different step than the journal recorded."""

    code = ErrorCode.NON_DETERMINISM

    def __init__(self, *, actor: str, seq: int, step: int, recorded: str, requested: str) -> None:
        super().__init__(f"actor {actor} run at seq {seq}, step {step}: the journal recorded "
                         f"{recorded} but the code now asks for {requested}")
        self.actor, self.seq, self.step = actor, seq, step
        self.recorded, self.requested = recorded, requested


class InvariantViolated(LoomError):
    """A commit-time invariant refused the step; nothing it changed was written."""

    code = ErrorCode.INVARIANT_VIOLATED

    def __init__(self, invariant: str, message: str, *, actor: str) -> None:
        super().__init__(f"invariant {invariant!r} refused the step of {actor}: {message}")
        self.invariant, self.actor = invariant, actor


class CircuitOpen(ActivityError):
    """The activity's circuit breaker is open: failing fast without running it."""

    code = ErrorCode.CIRCUIT_OPEN
    retryable = True


class EventTimeout(LoomError):
    """`wait_for_event` reached its timeout before the event arrived."""

    code = ErrorCode.EVENT_TIMEOUT


class RunCancelled(LoomError):
    """The run was cancelled (`loom actor cancel`, `ActorRuntime.cancel`): raised at its next
    step boundary or in the wait it is parked on, so its saga compensates."""

    code = ErrorCode.CANCELLED


class DeadLettered(LoomError):
    """The message's activation ended too often before its run finished (a poison message,
    a worker killed each time): it was moved to the dead-letter list (`loom dlq`)."""

    code = ErrorCode.DEAD_LETTERED


class ActivityFailed(LoomError):
    """An activity failed for good (retries exhausted or a non-retryable error)."""

    code = ErrorCode.ACTIVITY_FAILED

    def __init__(self, message: str, *, cause_code: str, attempts: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.cause_code, self.attempts = cause_code, attempts


class HandlerFailed(LoomError):
    """A handler raised; its state changes were discarded. Carries the original error."""

    code = ErrorCode.HANDLER_FAILED

    def __init__(self, message: str, *, error_type: str, error_code: str | None = None,
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self.error_type, self.error_code = error_type, error_code


class LintError(LoomError):
    """Actor code uses ambient time, randomness, environment or I/O."""

    code = ErrorCode.LINT


# -- workflows (WDL) --------------------------------------------------------------------------

class WorkflowInvalid(LoomError):
    """A workflow definition has problems; `problems` lists each with its JSON path."""

    code = ErrorCode.WORKFLOW_INVALID

    def __init__(self, source: str, problems: list[dict[str, str]]) -> None:
        listing = "\n  ".join(f"{p['path']}: {p['message']}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n  {listing}",
                         details=problems)
        self.problems = problems


class WorkflowFailed(LoomError):
    """A workflow step failed at run time (after compensations, if any, ran)."""

    code = ErrorCode.WORKFLOW_FAILED
