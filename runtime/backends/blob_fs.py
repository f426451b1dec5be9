"""Blob store on a local folder: the embedded default."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from runtime import errors
from runtime.backends.blob import Progress

KEY = re.compile(r"^[A-Za-z0-9._@-]+(/[A-Za-z0-9._@-]+)*$")
CHUNK = 4 * 1024 * 1024


def check_key(key: str) -> str:
    if not KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise errors.StorageError(f"invalid blob key {key!r}")
    return key


class FileBlobStore:
    """Each key is a file under `root`. Writes go to a temp file, then `link` (create-if-absent)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_if_absent(self, key: str, data: bytes, *, progress: Progress | None = None) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                view = memoryview(data)
                for start in range(0, max(len(data), 1), CHUNK):
                    f.write(view[start:start + CHUNK])
                    if progress:
                        progress(min(start + CHUNK, len(data)), len(data))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise errors.NotFound(f"blob {key!r} not found in {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        out = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                rel = p.relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    out.append(rel)
        return sorted(out)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
