"""Logging (issue 8 item 11): Loom's own concise lines by default, `--log-level`, and the
Azure SDK's per-request HTTP logging only with `--sdk-log`. The SDK is real: a blob client
pointed at a closed loopback port logs its request before failing."""

from __future__ import annotations

import io
import logging
import socket

import pytest

from runtime.cli import build_parser, logging_setup


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azure_request() -> None:
    """One real Azure SDK request (its logging policy logs at INFO), against nothing."""
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobServiceClient

    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"BlobEndpoint=http://127.0.0.1:{closed_port()}/devstoreaccount1;")
    client = BlobServiceClient.from_connection_string(conn, retry_total=0)
    with pytest.raises(AzureError):
        client.get_service_properties(timeout=2)


def capture(level: str | None, *, sdk: bool = False, long_running: bool = False) -> str:
    stream = io.StringIO()
    with logging_setup(level, sdk=sdk, long_running=long_running, stream=stream):
        logging.getLogger("loom.worker").info("worker running counter")
        logging.getLogger("loom.actors").debug("a debug detail")
        azure_request()
    return stream.getvalue()


def test_default_is_loom_lines_without_sdk_request_logging() -> None:
    text = capture(None, long_running=True)
    assert "INFO    loom.worker: worker running counter" in text
    assert "a debug detail" not in text
    assert "Request URL" not in text and "azure" not in text, text


def test_sdk_logging_only_when_asked_for() -> None:
    assert "Request URL" in capture("info", sdk=True)
    assert "Request URL" not in capture("debug")  # debug is Loom's debug, not the SDK's
    assert "a debug detail" in capture("debug")


def test_short_commands_default_to_warnings_only() -> None:
    text = capture(None)
    assert text == ""


def test_logging_setup_restores_what_it_changed() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers), logging.getLogger("azure").level)
    capture("debug", sdk=True)
    assert (root.level, list(root.handlers), logging.getLogger("azure").level) == before


@pytest.mark.parametrize("argv", [["--log-level", "debug", "worker", "--module", "m.py"],
                                  ["worker", "--module", "m.py", "--log-level", "debug"]])
def test_log_level_option_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.log_level == "debug" and args.sdk_log is False
