"""Pick backends from URL-like settings."""

from __future__ import annotations

from runtime import errors
from runtime.backends.blob import BlobStore
from runtime.settings import LoomSettings


def open_blob_store(settings: LoomSettings) -> BlobStore:
    url = settings.resolved_blob_url
    if url.startswith("file://"):
        from runtime.backends.blob_fs import FileBlobStore
        return FileBlobStore(url[len("file://"):])
    if url.startswith("azure://"):
        container = url[len("azure://"):].strip("/")
        secret = settings.azure_storage_connection_string
        if not container or secret is None:
            raise errors.SettingsInvalid(
                "LOOM_BLOB_URL=azure://<container> also needs "
                "LOOM_AZURE_STORAGE_CONNECTION_STRING")
        from runtime.backends.blob_azure import AzureBlobStore
        return AzureBlobStore(secret.get_secret_value(), container)
    raise errors.SettingsInvalid(
        f"LOOM_BLOB_URL={url!r}: expected file://<folder> or azure://<container>")
