"""One contract for every BlobStore, run against the folder store and Azure (Azurite)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from servers import Azurite, closed_port

from runtime import errors
from runtime.backends.blob import BlobStore


def test_is_a_blob_store(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)
    assert blob_store.url.startswith(("file://", "azure://"))


def test_put_if_absent_creates_once(blob_store: BlobStore) -> None:
    assert blob_store.put_if_absent("mods/a/1.wasm", b"first") is True
    assert blob_store.put_if_absent("mods/a/1.wasm", b"second") is False
    assert blob_store.get("mods/a/1.wasm") == b"first"


def test_get_missing_raises_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(errors.NotFound) as info:
        blob_store.get("nope/missing.bin")
    assert "nope/missing.bin" in str(info.value)
    assert not isinstance(info.value, errors.StorageError)


def test_exists(blob_store: BlobStore) -> None:
    assert blob_store.exists("x/y") is False
    blob_store.put_if_absent("x/y", b"1")
    assert blob_store.exists("x/y") is True
    assert blob_store.exists("x") is False  # a prefix is not a key


def test_list_by_prefix_sorted(blob_store: BlobStore) -> None:
    for key in ["m/b/2", "m/a/1", "m/b/10", "other/a", "ma/x", "m/a/0"]:
        assert blob_store.put_if_absent(key, key.encode())
    assert blob_store.list("m/") == ["m/a/0", "m/a/1", "m/b/10", "m/b/2"]
    assert blob_store.list("m/b/") == ["m/b/10", "m/b/2"]
    assert blob_store.list("m") == ["m/a/0", "m/a/1", "m/b/10", "m/b/2", "ma/x"]
    assert blob_store.list("zzz/") == []
    assert blob_store.list("") == sorted(["m/b/2", "m/a/1", "m/b/10", "other/a", "ma/x", "m/a/0"])


def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    blob_store.put_if_absent("d/k", b"v")
    blob_store.delete("d/k")
    assert blob_store.exists("d/k") is False
    with pytest.raises(errors.NotFound):
        blob_store.get("d/k")
    blob_store.delete("d/k")
    blob_store.delete("d/never-existed")
    assert blob_store.put_if_absent("d/k", b"again") is True  # the key is free again
    assert blob_store.get("d/k") == b"again"


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(range(256)) * 3, b"\xff\xfe\r\n\x00\x1a"],
                         ids=["empty", "nul", "all-bytes", "binary"])
def test_binary_round_trip(blob_store: BlobStore, data: bytes) -> None:
    assert blob_store.put_if_absent("bin/blob", data) is True
    assert blob_store.get("bin/blob") == data
    assert blob_store.exists("bin/blob")


def test_empty_blob_reports_progress(blob_store: BlobStore) -> None:
    calls: list[tuple[int, int]] = []
    assert blob_store.put_if_absent("empty", b"", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (0, 0)


def test_large_blob_with_progress(blob_store: BlobStore) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    calls: list[tuple[int, int]] = []
    assert blob_store.put_if_absent("big/5mb", data, progress=lambda d, t: calls.append((d, t)))
    assert blob_store.get("big/5mb") == data
    assert calls, "progress was never called"
    assert all(t == len(data) for _, t in calls)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and dones[0] >= 0 and dones[-1] == len(data)
    # and a second put of a large payload is refused without changing the bytes
    assert blob_store.put_if_absent("big/5mb", os.urandom(len(data))) is False
    assert blob_store.get("big/5mb") == data


@pytest.mark.parametrize("key", ["../x", "a//b", "", "/abs", "a/../b", "a/./b", "trailing/",
                                 "sp ace", "a\\b", ".."])
def test_invalid_keys_raise_storage_error(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(errors.StorageError):
        blob_store.put_if_absent(key, b"x")
    with pytest.raises(errors.StorageError):
        blob_store.get(key)
    with pytest.raises(errors.StorageError):
        blob_store.exists(key)
    with pytest.raises(errors.StorageError):
        blob_store.delete(key)


@pytest.mark.parametrize("size", [1024, 5 * 1024 * 1024], ids=["small", "chunked"])
def test_concurrent_put_if_absent_one_winner(blob_store: BlobStore, size: int) -> None:
    payloads = [bytes([i]) * size for i in range(8)]
    results: list[bool | None] = [None] * 8
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        try:
            barrier.wait()
            results[i] = blob_store.put_if_absent("race/key", payloads[i])
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert results.count(True) == 1, results
    assert results.count(False) == 7, results
    winner = results.index(True)
    assert blob_store.get("race/key") == payloads[winner]


@pytest.mark.integration
def test_azure_unreachable_endpoint_is_storage_error() -> None:
    from runtime.backends.blob_azure import AzureBlobStore

    server = Azurite()
    server.port = closed_port()
    t0 = time.monotonic()
    with pytest.raises(errors.StorageError) as info:
        AzureBlobStore(server.connection_string, "unreachable", retries=0, connect_timeout=2)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"took {elapsed:.1f}s"
    message = str(info.value)
    assert "devstoreaccount1" in message and "unreachable" in message
    assert "AccountKey" not in message and "Eby8vdM02" not in message
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.integration
def test_azure_errors_after_server_is_gone() -> None:
    """Operations on a store whose server went away give StorageError, never raw azure errors."""
    from runtime.backends.blob_azure import AzureBlobStore

    with Azurite() as server:
        store = AzureBlobStore(server.connection_string, "gone", retries=0, connect_timeout=2)
        assert store.put_if_absent("k", b"v")
    try:
        for op in (lambda: store.get("k"), lambda: store.exists("k"), lambda: store.list(""),
                   lambda: store.delete("k"), lambda: store.put_if_absent("k2", b"v")):
            with pytest.raises(errors.StorageError) as info:
                op()
            assert "Eby8vdM02" not in str(info.value)
            assert not isinstance(info.value, errors.NotFound)
    finally:
        store.close()


@pytest.mark.integration
def test_azure_url_and_bad_settings(azurite: Azurite) -> None:
    from runtime.backends.blob_azure import AzureBlobStore

    store = AzureBlobStore(azurite.connection_string, "url-check")
    try:
        assert store.url == "azure://devstoreaccount1/url-check"
        assert AzureBlobStore(azurite.connection_string, "url-check").put_if_absent("a", b"1")
        assert store.get("a") == b"1"  # an existing container is reused
    finally:
        store._service.delete_container("url-check")
        store.close()
    with pytest.raises(errors.SettingsInvalid):
        AzureBlobStore(azurite.connection_string, "Bad_Name")
    with pytest.raises(errors.SettingsInvalid) as info:
        AzureBlobStore("not a connection string; AccountKey=secret", "c-1")
    assert "secret" not in str(info.value)
