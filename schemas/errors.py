"""The error taxonomy shared by the host, the guest ABIs and later the journal."""

from enum import StrEnum


class ErrorCode(StrEnum):
    INPUT_INVALID = "input_invalid"
    OUTPUT_INVALID = "output_invalid"
    TIMEOUT = "timeout"
    OUT_OF_FUEL = "out_of_fuel"
    MEMORY_LIMIT = "memory_limit"
    STACK_OVERFLOW = "stack_overflow"
    INPUT_TOO_LARGE = "input_too_large"
    OUTPUT_TOO_LARGE = "output_too_large"
    CAPABILITY_DENIED = "capability_denied"
    TRAP = "trap"
    GUEST_ERROR = "guest_error"
    MODULE_INVALID = "module_invalid"
    MANIFEST_INVALID = "manifest_invalid"
    NOT_FOUND = "not_found"
    VERSION_CONFLICT = "version_conflict"
    INTEGRITY = "integrity"
    HOST_CALL_FAILED = "host_call_failed"
    STORAGE = "storage"
    SETTINGS_INVALID = "settings_invalid"
    JOURNAL_CONFLICT = "journal_conflict"
    NON_DETERMINISM = "non_determinism"
    INVARIANT_VIOLATED = "invariant_violated"
    CIRCUIT_OPEN = "circuit_open"
    EVENT_TIMEOUT = "event_timeout"
    ACTIVITY_FAILED = "activity_failed"
    HANDLER_FAILED = "handler_failed"
    LINT = "lint"
    WORKFLOW_INVALID = "workflow_invalid"
    WORKFLOW_FAILED = "workflow_failed"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"


class HintError(ValueError):
    """A handler's type hints cannot become its input/output JSON Schemas (schemas/hints.py).

    The message names the file and line (when known), the function and the parameter
    (`return` for the return annotation).
    """

    code = ErrorCode.MANIFEST_INVALID
    retryable = False

    def __init__(self, reason: str, *, function: str | None = None, param: str | None = None,
                 file: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.function = function
        self.param = param
        self.file = file
        self.line = line
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else (
            f"{self.file}: " if self.file else "")
        what = f"function {self.function!r}" if self.function else ""
        if self.param:
            what += (", return annotation" if self.param == "return"
                     else f", parameter {self.param!r}")
        return f"{where}{what + ': ' if what else ''}{self.reason}"

    def located(self, file: str, line: int | None) -> "HintError":
        """The same error, naming the file and line it was found in."""
        self.file, self.line = file, self.line or line
        self.args = (self._text(),)
        return self


class SignatureError(HintError):
    """The handler's signature: not one parameter, a missing annotation, or a type
    Pydantic cannot turn into a JSON Schema the manifest compiler accepts."""


class GuestSourceError(HintError):
    """The guest source file cannot be loaded on the host (syntax, import, no handler)."""
