"""The blob store protocol: flat keys -> immutable-by-convention bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

Progress = Callable[[int, int], None]
"""Called as progress(bytes_done, bytes_total) while a large upload runs."""


@runtime_checkable
class BlobStore(Protocol):
    """Keys are '/'-separated paths of [A-Za-z0-9._@/-]. Implementations must be thread-safe."""

    url: str

    def put_if_absent(self, key: str, data: bytes, *, progress: Progress | None = None) -> bool:
        """Store `data` under `key` unless the key exists. True if this call created it.

        The write is atomic: readers see either nothing or all of `data`.
        """
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes under `key`; raise `errors.NotFound` if absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; no error if absent."""
        ...
