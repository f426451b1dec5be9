"""The journal on Azure Cosmos DB (SQL API): one container partitioned by `/actor`.

Every item of an actor lives in that actor's logical partition:

- a commit is `{"id": "c:<seq, 12 digits>", "actor", "seq", "type": "commit", "has_state",
  "body"}`, written with a plain create (HTTP 409 -> `JournalConflict`), never upserted;
- an inbox entry is `{"id": "i:<message id>", "actor", "type": "inbox", "mid", "kind", "enq",
  "deliver_at", "consumed_at", "body"}`, also a plain create (409 -> "already enqueued");
  consuming it patches `consumed_at` (only while it is still null), which leaves a tombstone
  that keeps refusing the id until `purge_tombstones` deletes it.

`body` holds the commit or envelope as JSON *text*, not as a nested JSON object: Cosmos (and
its emulator) keep numbers as IEEE doubles, so a nested document would come back with 1.0 as
1, -0.0 as 0 and integers beyond 2**53 rounded, and replay compares states by their JSON.
The fields next to `body` are the ones queries filter on.

`enq` is a per-journal strictly increasing count of microseconds since the epoch (not
nanoseconds: a double can't hold today's `time.time_ns()` exactly, and ties would break the
enqueue order).

Cosmos items are limited to 2 MB. A commit (or envelope) whose item would exceed
`max_item_bytes` has its largest values (`state`, `result`, event results and payloads, outbox
and message payloads) moved into the optional blob store, under
`journal/<actor>/<seq>/<n>-<sha256>.json` (inbox payloads: `journal/<actor>/inbox/...`), and
replaced by `{"$blob": key}`; the item lists the moved paths in `blobs`, and reads put the
values back. The key carries the content hash because a losing writer of the same (actor, seq)
may already have created a blob for it: `put_if_absent` must never let the winner's commit
point at the loser's bytes. Without a blob store an oversized item is refused with a
`StorageError` before anything is written.

The azure-cosmos client is synchronous (its aio client needs aiohttp); each operation runs in a
worker thread via `asyncio.to_thread`. The database and container are created, if missing, on
first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey
from azure.cosmos.exceptions import CosmosHttpResponseError
from urllib3.exceptions import InsecureRequestWarning

from runtime import errors
from runtime.backends.blob import BlobStore
from runtime.journal.store import Commit, Envelope, JournalConflict

__all__ = ["MAX_ITEM_BYTES", "CosmosJournal"]

MAX_ITEM_BYTES = 1_500_000
"""Largest item this journal writes (Cosmos refuses items over 2 MB)."""
MIN_BLOB_BYTES = 1024
"""Values smaller than this are never moved to the blob store."""
MAX_ID_BYTES = 1000
"""Cosmos ids are limited to 1023 bytes; longer message ids are stored under their hash."""

_T = TypeVar("_T")
PathPart = str | int
Path = tuple[PathPart, ...]

_ID_ESCAPES = {c: f"%{ord(c):02X}" for c in "%/\\?#"}
_SAFE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PENDING = "c.type = 'inbox' AND IS_NULL(c.consumed_at)"
_NOT_CONSUMED = "FROM c WHERE IS_NULL(c.consumed_at)"
_INDEXING = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/body/?"}, {"path": "/blobs/*"}, {"path": '/"_etag"/?'}],
}


def _dumps(value: Any) -> str:
    """Compact JSON text; `\\u` escapes only if the value holds lone surrogates."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, separators=(",", ":"))
    return text


def _item_bytes(item: dict[str, Any]) -> int:
    """The size of `item` as the SDK sends it."""
    return len(json.dumps(item, ensure_ascii=False, separators=(",", ":"))
               .encode("utf-8", "surrogatepass"))


def _item_id(prefix: str, key: Any) -> str:
    """A Cosmos id for `key`: percent-escape what ids may not contain (and '%' itself)."""
    text = str(key)
    escaped = "".join(f"%{ord(ch):02X}" if ch < " " or ch == "\x7f" else _ID_ESCAPES.get(ch, ch)
                      for ch in text)
    if len(escaped.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES:
        return f"{prefix}:{escaped}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}h:{digest}"


def _key_part(text: str) -> str:
    """`text` as one blob-key segment of [A-Za-z0-9_@-] (other characters as @xx bytes;
    a long one as its hash, to stay within file-name limits)."""
    raw = text.encode("utf-8", "surrogatepass")
    part = "".join(ch if ch in _SAFE_KEY_CHARS else
                   "".join(f"@{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
                   for ch in text)
    return part if 0 < len(part) <= 120 else f"@h{hashlib.sha256(raw).hexdigest()}"


def _get(doc: Any, path: Path) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: Path, value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def _has(doc: Any, path: Path) -> bool:
    for part in path:
        if isinstance(part, int):
            if not isinstance(doc, list) or part >= len(doc):
                return False
        elif not isinstance(doc, dict) or part not in doc:
            return False
        doc = doc[part]
    return True


def _commit_paths(commit: Commit) -> list[Path]:
    """Values of a commit that may move to the blob store."""
    paths: list[Path] = [("state",), ("result",), ("message", "payload")]
    for field in ("events", "outbox"):
        items = commit.get(field)
        if isinstance(items, list):
            for i in range(len(items)):
                paths += [(field, i, "payload"), (field, i, "result")]
    return [p for p in paths if _has(commit, p)]


class CosmosJournal:
    """The journal on a Cosmos DB SQL-API container (see the module docstring)."""

    def __init__(self, endpoint: str, key: str, *, database: str = "loom",
                 container: str = "journal", verify_tls: bool = True,
                 blob: BlobStore | None = None, max_item_bytes: int = MAX_ITEM_BYTES,
                 timeout: float = 30.0) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise errors.SettingsInvalid(
                f"Cosmos endpoint must be https://<host>[:<port>], got {endpoint!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.url = f"cosmos://{host}:{port}/{database}/{container}"
        self.endpoint = f"{parts.scheme}://{host}:{port}/"
        self.database = database
        self.container = container
        self.verify_tls = verify_tls
        self.blob = blob
        self.max_item_bytes = max_item_bytes
        self.timeout = timeout
        self._key = key
        self._client: CosmosClient | None = None
        self._container: ContainerProxy | None = None
        self._init_lock = threading.Lock()
        self._enq_lock = threading.Lock()
        self._last_enq = 0
        self._distinct = True  # the emulator's SQL has no DISTINCT; found out on first use

    # -- plumbing --------------------------------------------------------------------------
    def _fail(self, op: str, actor: str | None, exc: BaseException) -> NoReturn:
        status = getattr(exc, "status_code", None)
        message = str(getattr(exc, "message", None) or exc).strip()
        first = next((ln.strip() for ln in message.splitlines() if ln.strip()), "")
        if self._key:
            first = first.replace(self._key, "***")
        where = f" for actor {actor!r}" if actor is not None else ""
        code = f" (HTTP {status})" if status is not None else ""
        raise errors.StorageError(
            f"Cosmos {op}{where} on {self.url} failed{code}: {type(exc).__name__}: {first}",
            details={"status": status, "actor": actor, "op": op}) from exc

    def _connect(self) -> ContainerProxy:
        if not self.verify_tls:  # an explicit, documented opt-out (the loopback emulator)
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        try:
            client = CosmosClient(self.endpoint, credential=self._key,
                                  connection_verify=self.verify_tls,
                                  connection_timeout=self.timeout,
                                  no_response_on_write=True)  # don't echo 1.5 MB items back
        except AzureError as exc:
            self._fail("connect", None, exc)
        except (ValueError, TypeError):
            # Never echo the SDK's message: it may quote the key.
            raise errors.SettingsInvalid("malformed Cosmos endpoint or key") from None
        try:
            db = client.create_database_if_not_exists(self.database)
            container, props = db.create_container_if_not_exists(
                self.container, partition_key=PartitionKey(path="/actor"),
                indexing_policy=_INDEXING, return_properties=True)
        except (ValueError, TypeError):
            client.close()
            raise errors.SettingsInvalid("malformed Cosmos key") from None
        except AzureError as exc:
            client.close()
            self._fail("create database/container", None, exc)
        paths = (props.get("partitionKey") or {}).get("paths")
        if paths != ["/actor"]:
            client.close()
            raise errors.SettingsInvalid(
                f"Cosmos container {self.database}/{self.container} is partitioned by "
                f"{paths}, not ['/actor']: it is not a Loom journal")
        self._client = client
        return container

    def _c(self) -> ContainerProxy:
        if self._container is None:
            with self._init_lock:
                if self._container is None:
                    self._container = self._connect()
        return self._container

    async def _run(self, op: str, actor: str | None, fn: Callable[[ContainerProxy], _T]) -> _T:
        def call() -> _T:
            try:
                return fn(self._c())
            except errors.LoomError:
                raise
            except AzureError as exc:
                self._fail(op, actor, exc)

        return await asyncio.to_thread(call)

    @staticmethod
    def _query(c: ContainerProxy, sql: str, partition: str | None,
               **params: Any) -> Iterable[Any]:
        """Run `sql` in one actor's partition, or across partitions if `partition` is None."""
        parameters: list[dict[str, Any]] = [{"name": f"@{k}", "value": v}
                                            for k, v in params.items()]
        if partition is None:
            return c.query_items(sql, parameters=parameters, enable_cross_partition_query=True)
        return c.query_items(sql, parameters=parameters, partition_key=partition)

    # -- values too large for an item --------------------------------------------------------
    def _encode(self, doc: dict[str, Any], meta: dict[str, Any], paths: list[Path], what: str,
                key_prefix: str) -> dict[str, Any]:
        """The item for `doc`, moving large values at `paths` to the blob store if needed."""
        item = {**meta, "body": _dumps(doc)}
        size = _item_bytes(item)
        if size <= self.max_item_bytes:
            return item
        if self.blob is None:
            raise errors.StorageError(
                f"{what} would be a {size}-byte Cosmos item, over this journal's "
                f"{self.max_item_bytes}-byte limit (Cosmos refuses items over 2 MB); give "
                "CosmosJournal a blob store to hold its large values. Nothing was written.",
                details={"actor": meta.get("actor"), "bytes": size})
        copy = json.loads(item["body"])
        texts = sorted(((len(t.encode("utf-8", "surrogatepass")), i, p, t) for i, (p, t) in
                        enumerate((p, _dumps(_get(doc, p))) for p in paths)), reverse=True)
        puts: list[tuple[str, bytes]] = []
        refs: list[dict[str, Any]] = []
        for nbytes, _, path, text in texts:
            if size <= self.max_item_bytes or nbytes < MIN_BLOB_BYTES:
                break
            data = text.encode("utf-8", "surrogatepass")
            digest = hashlib.sha256(data).hexdigest()
            key = f"{key_prefix}/{len(refs)}-{digest}.json"
            _set(copy, path, {"$blob": key})
            puts.append((key, data))
            refs.append({"path": list(path), "key": key, "sha256": digest})
            item = {**meta, "body": _dumps(copy), "blobs": refs}
            size = _item_bytes(item)
        if size > self.max_item_bytes:
            raise errors.StorageError(
                f"{what} would be a {size}-byte Cosmos item even with {len(refs)} large "
                f"value(s) moved to the blob store (limit {self.max_item_bytes} bytes). "
                "Nothing was written.", details={"actor": meta.get("actor"), "bytes": size})
        for key, data in puts:
            try:
                self.blob.put_if_absent(key, data)
            except (errors.LoomError, OSError) as exc:
                reason = exc.message if isinstance(exc, errors.LoomError) else repr(exc)
                raise errors.StorageError(f"{what}: storing {key} in {self.blob.url} failed: "
                                          f"{reason}. Nothing was written to Cosmos.") from exc
        return item

    def _decode(self, item: dict[str, Any], what: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(item["body"])
        for ref in item.get("blobs") or ():
            key = ref["key"]
            if self.blob is None:
                raise errors.StorageError(f"{what} keeps values in blob {key}, but this "
                                          "CosmosJournal has no blob store")
            try:
                data = self.blob.get(key)
            except (errors.LoomError, OSError) as exc:
                reason = exc.message if isinstance(exc, errors.LoomError) else repr(exc)
                raise errors.StorageError(f"{what}: reading blob {key} from {self.blob.url} "
                                          f"failed: {reason}") from exc
            if hashlib.sha256(data).hexdigest() != ref["sha256"]:
                raise errors.IntegrityError(f"{what}: blob {key} in {self.blob.url} does not "
                                            "match the hash the journal recorded")
            _set(doc, tuple(ref["path"]), json.loads(data))
        return doc

    # -- commits ---------------------------------------------------------------------------
    async def append(self, commit: Commit) -> None:
        actor, seq = commit["actor"], commit["seq"]
        what = f"commit {actor}#{seq}"
        meta = {"id": f"c:{seq:012d}", "actor": actor, "seq": seq, "type": "commit",
                "has_state": "state" in commit}

        def write(c: ContainerProxy) -> None:
            item = self._encode(commit, meta, _commit_paths(commit), what,
                                f"journal/{_key_part(str(actor))}/{seq}")
            try:
                c.create_item(item)
            except CosmosHttpResponseError as exc:
                if exc.status_code == 409:
                    raise JournalConflict(f"{what} already exists") from None
                raise

        await self._run("append", actor, write)

    def _commits(self, c: ContainerProxy, actor: str, cond: str, **params: Any) -> list[Commit]:
        rows = self._query(c, "SELECT c.seq, c.body, c.blobs FROM c WHERE c.actor = @actor AND "
                              f"c.type = 'commit'{cond}", actor, actor=actor, **params)
        ordered = sorted(rows, key=lambda r: r["seq"])
        return [self._decode(r, f"commit {actor}#{r['seq']}") for r in ordered]

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        return await self._run("read", actor, lambda c: self._commits(
            c, actor, " AND c.seq > @after", after=after_seq))

    async def read_tail(self, actor: str) -> list[Commit]:
        def tail(c: ContainerProxy) -> list[Commit]:
            rows = self._query(c, "SELECT VALUE MAX(c.seq) FROM c WHERE c.actor = @actor AND "
                                  "c.type = 'commit' AND c.has_state = true", actor, actor=actor)
            last = [r for r in rows if isinstance(r, int | float) and not isinstance(r, bool)]
            if not last:
                return self._commits(c, actor, "")
            return self._commits(c, actor, " AND c.seq >= @start", start=last[0])

        return await self._run("read_tail", actor, tail)

    # -- inbox -----------------------------------------------------------------------------
    def _next_enq(self) -> int:
        with self._enq_lock:
            self._last_enq = max(time.time_ns() // 1000, self._last_enq + 1)
            return self._last_enq

    async def enqueue(self, envelope: Envelope) -> bool:
        actor, mid = envelope["target"], envelope["id"]
        meta = {"id": _item_id("i", mid), "actor": actor, "type": "inbox", "mid": str(mid),
                "kind": envelope.get("kind", "call"), "enq": self._next_enq(),
                "deliver_at": float(envelope.get("deliver_at", 0.0)), "consumed_at": None}
        what = f"message {mid} to {actor}"
        paths: list[Path] = [("payload",)] if _has(envelope, ("payload",)) else []

        def write(c: ContainerProxy) -> bool:
            item = self._encode(envelope, meta, paths, what,
                                f"journal/{_key_part(str(actor))}/inbox")
            try:
                c.create_item(item)
            except CosmosHttpResponseError as exc:
                if exc.status_code == 409:
                    return False
                raise
            return True

        return await self._run("enqueue", actor, write)

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        def read(c: ContainerProxy) -> list[Envelope]:
            rows = sorted(self._query(
                c, "SELECT c.mid, c.enq, c.body, c.blobs FROM c WHERE c.actor = @actor AND "
                   f"{_PENDING} AND c.deliver_at <= @now", actor, actor=actor, now=now),
                key=lambda r: (r["enq"], r["mid"]))
            return [self._decode(r, f"message {r['mid']} to {actor}") for r in rows]

        docs = await self._run("inbox", actor, read)
        if calls is None:
            return docs
        others = [d for d in docs if d.get("kind", "call") != "call"]
        return others + [d for d in docs if d.get("kind", "call") == "call"][:calls]

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        if not ids:
            return

        def patch(c: ContainerProxy) -> None:
            for mid in ids:
                try:
                    c.patch_item(_item_id("i", mid), partition_key=actor,
                                 patch_operations=[{"op": "set", "path": "/consumed_at",
                                                    "value": now}],
                                 filter_predicate=_NOT_CONSUMED)
                except CosmosHttpResponseError as exc:
                    if exc.status_code not in (404, 412):  # absent / already consumed
                        raise

        await self._run("consume", actor, patch)

    async def due_actors(self, now: float, limit: int = 1000, *,
                         calls: bool = True) -> list[str]:
        kinds = "" if calls else " AND c.kind != 'call'"

        def due(c: ContainerProxy) -> list[str]:
            found: dict[str, None] = {}
            if limit <= 0:
                return []
            for actor in self._query(c, f"SELECT VALUE c.actor FROM c WHERE {_PENDING} AND "
                                        f"c.deliver_at <= @now{kinds}", None, now=now):
                found[actor] = None
                if len(found) >= limit:
                    break
            return list(found)

        return await self._run("due_actors", None, due)

    async def next_due(self, now: float) -> float | None:
        def earliest(c: ContainerProxy) -> float | None:
            rows = self._query(c, f"SELECT VALUE MIN(c.deliver_at) FROM c WHERE {_PENDING} "
                                  "AND c.deliver_at > @now", None, now=now)
            times = [float(r) for r in rows
                     if isinstance(r, int | float) and not isinstance(r, bool)]
            return min(times) if times else None

        return await self._run("next_due", None, earliest)

    async def actors(self, prefix: str = "") -> list[str]:
        where = "FROM c WHERE c.type = 'commit' AND STARTSWITH(c.actor, @prefix)"

        def names(c: ContainerProxy) -> list[str]:
            if self._distinct:
                try:
                    return sorted(set(self._query(c, f"SELECT DISTINCT VALUE c.actor {where}",
                                                  None, prefix=prefix)))
                except CosmosHttpResponseError as exc:
                    if exc.status_code != 400:
                        raise
                    self._distinct = False
            return sorted(set(self._query(c, f"SELECT VALUE c.actor {where}", None,
                                          prefix=prefix)))

        return await self._run("actors", None, names)

    async def purge_tombstones(self, older_than: float) -> int:
        def purge(c: ContainerProxy) -> int:
            rows = list(self._query(
                c, "SELECT c.id, c.actor FROM c WHERE c.type = 'inbox' AND "
                   "NOT IS_NULL(c.consumed_at) AND c.consumed_at < @t", None, t=older_than))
            purged = 0
            for row in rows:
                try:
                    c.delete_item(row["id"], partition_key=row["actor"])
                except CosmosHttpResponseError as exc:
                    if exc.status_code != 404:
                        raise
                else:
                    purged += 1
            return purged

        return await self._run("purge_tombstones", None, purge)

    async def close(self) -> None:
        client, self._client, self._container = self._client, None, None
        if client is not None:
            await asyncio.to_thread(client.close)
