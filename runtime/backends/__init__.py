"""Storage backends chosen by settings: blob stores (filesystem, Azure Blob)."""

from runtime.backends.blob import BlobStore
from runtime.backends.blob_fs import FileBlobStore
from runtime.backends.factory import open_blob_store

__all__ = ["BlobStore", "FileBlobStore", "open_blob_store"]
