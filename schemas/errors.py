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
