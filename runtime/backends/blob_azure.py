"""Blob store on an Azure Storage container (or Azurite), via the sync azure-storage-blob SDK."""

from __future__ import annotations

import re
from typing import NoReturn

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from runtime import errors
from runtime.backends.blob import Progress
from runtime.backends.blob_fs import CHUNK, check_key

CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
"""Azure's container naming rule: 3-63 chars of [a-z0-9-], no leading/trailing/double '-'."""

_SECRET = re.compile(r"(?i)\b(sig|accountkey|sharedaccesssignature)=[^&;\s'\"]+")


def _scrub(text: str) -> str:
    """Drop anything that looks like key material (SAS signature, account key) from a message."""
    return _SECRET.sub(lambda m: f"{m.group(1)}=***", text)


def _reason(exc: AzureError) -> str:
    first = (str(exc.message or exc).strip().splitlines() or [""])[0]
    code = getattr(exc, "error_code", None)
    return _scrub(f"{type(exc).__name__}: {first}" + (f" [{code}]" if code else ""))


class AzureBlobStore:
    """Each key is a block blob in `container`. Creates are atomic `If-None-Match: *` writes.

    Uploads up to `CHUNK` bytes are a single Put Blob; larger ones stage `CHUNK`-sized blocks
    (random block ids) and commit them with `If-None-Match: *`, so a blob appears all at once
    and concurrent creators of the same key never mix their blocks.
    """

    def __init__(self, connection_string: str, container: str, *, retries: int = 3,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        if not CONTAINER.match(container):
            raise errors.SettingsInvalid(
                f"invalid Azure container name {container!r}: 3-63 chars of a-z, 0-9 and '-'")
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string,
                retry_policy=ExponentialRetry(initial_backoff=1, increment_base=2,
                                              random_jitter_range=1, retry_total=retries),
                connection_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_single_put_size=CHUNK,
                max_block_size=CHUNK,
            )
        except ValueError:
            # The SDK's message is generic; never echo the string itself (it holds the key).
            raise errors.SettingsInvalid("malformed Azure Storage connection string") from None
        self.account = self._service.account_name or "unknown-account"
        self.container = container
        self.url = f"azure://{self.account}/{container}"
        self._host = self._service.primary_hostname
        self._container: ContainerClient = self._service.get_container_client(container)
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as e:
            self._fail("create container for", None, e)

    def _fail(self, op: str, key: str | None, exc: AzureError) -> NoReturn:
        what = f"blob {key!r} in {self.url}" if key is not None else self.url
        raise errors.StorageError(f"{op} {what} (at {self._host}) failed: {_reason(exc)}") from exc

    def put_if_absent(self, key: str, data: bytes, *, progress: Progress | None = None) -> bool:
        blob = self._container.get_blob_client(check_key(key))
        total = len(data)

        def hook(done: int, _total: int | None) -> None:
            if progress:
                progress(done, total)

        try:
            if total > CHUNK and blob.exists():
                return False  # don't stage megabytes only to lose the commit
            blob.upload_blob(data, length=total, overwrite=False,
                             progress_hook=hook, max_concurrency=1)
        except ResourceExistsError:
            return False
        except AzureError as e:
            self._fail("put", key, e)
        return True

    def get(self, key: str) -> bytes:
        blob = self._container.get_blob_client(check_key(key))
        try:
            return blob.download_blob().readall()
        except ResourceNotFoundError as e:
            if getattr(e, "error_code", None) in (None, "BlobNotFound"):
                raise errors.NotFound(f"blob {key!r} not found in {self.url}") from None
            self._fail("get", key, e)
        except AzureError as e:
            self._fail("get", key, e)

    def exists(self, key: str) -> bool:
        blob = self._container.get_blob_client(check_key(key))
        try:
            return blob.exists()
        except AzureError as e:
            self._fail("check", key, e)

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(self._container.list_blob_names(name_starts_with=prefix or None))
        except AzureError as e:
            self._fail("list", f"{prefix}*", e)

    def delete(self, key: str) -> None:
        blob = self._container.get_blob_client(check_key(key))
        try:
            blob.delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            pass
        except AzureError as e:
            self._fail("delete", key, e)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._service.close()

    def __repr__(self) -> str:
        return f"AzureBlobStore({self.url!r})"
