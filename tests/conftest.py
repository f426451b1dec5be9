"""Shared fixtures. Real servers (tests/servers.py) start lazily, once per session, only when a
test asks for them; tests using them are marked `integration` automatically
(`pytest -m "not integration"` skips them)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repo is not installed into the venv
    sys.path.insert(0, str(ROOT))

from servers import Azurite, CosmosServer, HttpTestServer, RedisServer  # noqa: E402

from runtime.backends.blob import BlobStore  # noqa: E402

SERVER_FIXTURES = {"azurite", "cosmos_server", "redis_server", "http_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite blob service; `.connection_string`, `.blob_endpoint`."""
    with Azurite() as server:
        yield server


@pytest.fixture(scope="session")
def cosmos_server() -> Iterator[CosmosServer]:
    """Cosmos SQL-API server; `.endpoint`, `.key`, `.cert_path`.

    Clients must still pass `connection_verify=False` (the cert is self-signed, expired and
    names CN=cosmosdb). SSL_CERT_FILE points at the cert while the session runs, so requests
    doesn't reload the whole CA bundle for each of the server's non-keep-alive connections.
    """
    with CosmosServer() as server:
        saved = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(server.cert_path)
        try:
            yield server
        finally:
            if saved is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = saved


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """redis-server without persistence; `.url` is redis://127.0.0.1:<port>/0."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpTestServer]:
    """In-process HTTP server: `.base_url`, `.url(path)`, `.requests`, `.route(...)`,
    `.reset()` (call it at the start of a test that inspects `.requests`)."""
    with HttpTestServer() as server:
        yield server


@pytest.fixture(params=["fs", pytest.param("azure", marks=pytest.mark.integration)])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """A fresh, empty blob store per test: a folder, or a new container on the session Azurite."""
    if request.param == "fs":
        from runtime.backends.blob_fs import FileBlobStore

        yield FileBlobStore(tmp_path / "blobs")
        return
    from runtime.backends.blob_azure import AzureBlobStore

    server: Azurite = request.getfixturevalue("azurite")
    container = f"t-{uuid.uuid4().hex[:24]}"
    store = AzureBlobStore(server.connection_string, container)
    try:
        yield store
    finally:
        try:
            store._service.delete_container(container)
        finally:
            store.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    """A redis-py client on the session's redis-server (the cluster tests)."""
    import redis

    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


@pytest.fixture
def keys() -> Any:
    """Cluster key names under a prefix of their own, so tests never see each other's."""
    from runtime.cluster import ClusterKeys

    return ClusterKeys(f"t{uuid.uuid4().hex[:12]}")
