"""Reading JSON text that a person wrote, with errors a person understands.

`parse_json_text(data, what)` accepts bytes or str and raises `JsonTextError` with one
plain sentence: not UTF-8 (which byte, where), or where the JSON breaks and how, with a
few characters of context. Parser jargon ("expected ident", "Expecting value") never
reaches a user.
"""

from __future__ import annotations

import json
from typing import Any

_PLAIN = {
    "Expecting value": "expected a JSON value (an object, array, string, number, true, "
                       "false or null)",
    "Expecting property name enclosed in double quotes":
        "expected a key in double quotes (JSON has no single quotes, bare keys or "
        "trailing commas)",
    "Expecting ',' delimiter": "expected ',' between two items",
    "Expecting ':' delimiter": "expected ':' after a key",
    "Extra data": "unexpected text after the end of the JSON value",
    "Unterminated string starting at": "a string is not closed with '\"'",
    "Invalid control character at": "a raw control character (e.g. a line break) inside "
                                    "a string; write it as an escape such as \\n",
    "Invalid \\escape": "invalid escape sequence in a string",
    "Invalid \\uXXXX escape": "invalid \\uXXXX escape in a string",
}


class JsonTextError(ValueError):
    """`what` is not UTF-8 JSON text; the message says why in plain words."""

    def __init__(self, what: str, problem: str, reason: str = "") -> None:
        super().__init__(f"{what} {problem}")
        self.what = what
        self.problem = problem
        self.reason = reason or problem
        """The bare reason, without "is not valid JSON:"."""


def describe_decode_error(exc: json.JSONDecodeError) -> str:
    """`exc` in plain words, with its line, column and a little context."""
    reason = _PLAIN.get(exc.msg, exc.msg[:1].lower() + exc.msg[1:])
    if exc.doc.strip() and exc.pos >= len(exc.doc.rstrip()):
        reason = "the text ends too early (an unclosed bracket, brace or string?)"
    lines = exc.doc.split("\n")
    line = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else ""
    snippet = line[max(0, exc.colno - 11):exc.colno + 19].strip()
    near = f" near {snippet!r}" if snippet else " (the text is empty)" if not exc.doc.strip() \
        else ""
    return f"{reason}, at line {exc.lineno} column {exc.colno}{near}"


def parse_json_text(data: bytes | str, what: str) -> Any:
    """Parse UTF-8 JSON; raise JsonTextError("<what> is not UTF-8 text/valid JSON: ...")."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            bad = data[exc.start:exc.start + 1].hex()
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            reason = (f"byte 0x{bad} at line {line} column {column} (offset {exc.start}) is not "
                      "UTF-8 (JSON text must be UTF-8)")
            raise JsonTextError(what, f"is not UTF-8 text: {reason}", reason) from None
    else:
        text = data
    if "\x00" in text:
        reason = f"it contains a NUL character at offset {text.index(chr(0))}"
        raise JsonTextError(what, f"is not valid JSON: {reason}", reason)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = describe_decode_error(exc)
        raise JsonTextError(what, f"is not valid JSON: {reason}", reason) from None
    except RecursionError:
        raise JsonTextError(what, "is not usable JSON: nested too deeply",
                            "nested too deeply") from None


def json_problem(data: bytes | str) -> str:
    """Why `data` is not acceptable JSON, in plain words ("is not valid JSON: ...").

    For error paths only: it parses again to find the reason."""
    try:
        parse_json_text(data, "")
    except JsonTextError as exc:
        return exc.problem
    return "is not valid JSON: NaN and Infinity are not JSON numbers"
