"""The journal on Azure Cosmos DB (SQL API): one container partitioned by `/actor`.

Every item of an actor lives in that actor's logical partition:

- a commit is `{"id": "c:<seq, 12 digits>", "actor", "seq", "type": "commit", "has_state",
  "done", "body"}`, written with a plain create (HTTP 409 -> `JournalConflict`), never
  upserted. `done` is the message id a completing commit (one with "kind") finished, so
  `outcome()` is one indexed lookup in the partition;
- an inbox entry is `{"id": "i:<message id>", "actor", "type": "inbox", "mid", "kind", "n",
  "deliver_at", "consumed_at", "at", "body"}`. Consuming it patches `consumed_at` (only while
  it is still null), which leaves a tombstone that keeps refusing the id;
- the schedule row is one item per actor, `{"id": "s", "type": "sched", "last_n", "due_at",
  "due_key", "owner", "lease_until", "epoch"}`, only ever changed by an etag-conditional
  replace (if-match; a 412 re-reads and retries), so every change of it is a compare-and-set.

**Enqueue** is three writes in this order: create the entry with `n = null` (409 -> a
duplicate: False, and nothing else is touched); take the next number from the schedule row
(`last_n + 1`) and lower its `due_at` in the same conditional replace; patch `n` into the
entry. Readers skip entries whose `n` is still null. The order matters: `settle` reads the
row, then the inbox, then replaces the row if-match, so an entry it did not see either makes
its replace fail (the numbering wrote the row in between) or lowers `due_at` after it. An
enqueue cut off after the create is finished by the sender's retry (its create gets 409,
finds `n` null and numbers it) or by the next `settle` of that actor (after `REPAIR_AFTER_S`).
Two enqueues can finish out of number order, so an inbox read can miss an entry numbered
below what it saw; this journal remembers which numbers it returned per actor, and `settle`
counts a pending entry it never returned as unseen even below `seen_n` (a spurious wake at
worst, never a lost message).

**Scheduling cost.** `due_key` orders the schedule: a ready actor gets `arrival µs - 2**52`
(negative, exact in a double, oldest first), a timed one its due time, an actor with nothing
to do null. `due_actors` is one cross-partition query on schedule items, `due_key <= now` plus
the owner filter, `ORDER BY due_key`, `TOP limit + 1`; the row past the due ones gives
`next_due`. If `limit` ready actors fill the page, a second query takes the due timers, so
neither kind starves the other. The runtime calls `due_actors` and `next_due` every
`poll_interval` (50 ms), so this journal rate-limits itself: it queries at most once per
`poll_interval_s` (1 s by default) unless a due time it knows of has come (the `next_due` of
the last query, a timer this process enqueued, a time this process settled an actor to) or
the last page was full. `next_due` never queries. An idle worker thus costs one query a
second plus `owners()` (cached for ten poll intervals). Messages from other processes are
seen within `poll_interval_s`; a process's own messages wake its actors at once.

**Leases.** `acquire` and `settle` are conditional replaces of the row. `renew` extends the
leases this journal object granted (it keeps the set per owner) with one conditional replace
each, so renewing costs a point read and a write per held actor every `lease_ttl/3`; a lease
taken over by another owner drops out of the set. `owners` and `expire_owner` are
cross-partition queries on schedule items.

**Throttling.** The SDK's own 429 retry (which sleeps in a thread and retries at once when
there is no `x-ms-retry-after-ms`) is off; each request here waits what the server asks in
`x-ms-retry-after-ms` (or backs off when it does not say) with `asyncio.sleep`, and gives up
with a retryable `StorageError` after `max_throttle_wait_s` in all.

**Compaction.** A commit carrying `state` is a snapshot: `read_tail` returns the latest one
and everything after, and `load()` re-dispatches only the newest commit's outbox. After every
`compact_every`-th state-bearing commit of an actor, a background task (also `compact()`)
deletes, in that partition only:
- tombstones consumed more than `tombstone_ttl_s` ago (a late duplicate within that time is
  refused; after it, it would run again — so the TTL must exceed any redelivery delay);
- commits older than the latest state-bearing commit *and* older than `tombstone_ttl_s +
  commit_margin_s` (server `_ts`; the margin is an hour by default), so `outcome()` still
  answers a duplicate that a tombstone refused, and the blobs those commits reference.
It never deletes the latest state-bearing commit or anything after it, so replay, the newest
outbox and its `consumed` ids are untouched, and nothing is ever sent again.

`body` holds the commit or envelope as JSON *text*, not as a nested JSON object: Cosmos (and
its emulator) keep numbers as IEEE doubles, so a nested document would come back with 1.0 as
1, -0.0 as 0 and integers beyond 2**53 rounded, and replay compares states by their JSON.
The fields next to `body` are the ones queries filter on.

Cosmos items are limited to 2 MB. A commit (or envelope) whose item would exceed
`max_item_bytes` has its largest values (`state`, `result`, event results and payloads, outbox
and message payloads) moved into the optional blob store, under
`journal/<actor>/<seq>/<n>-<sha256>.json` (inbox payloads: `journal/<actor>/inbox/...`), and
replaced by `{"$blob": key}`; the item lists the moved paths in `blobs`, and reads put the
values back. The key carries the content hash because a losing writer of the same (actor, seq)
may already have created a blob for it: `put_if_absent` must never let the winner's commit
point at the loser's bytes. Without a blob store an oversized item is refused with a
`StorageError` before anything is written. Inbox blobs are never deleted (two envelopes with
equal payloads share one key).

The azure-cosmos client is synchronous (its aio client needs aiohttp); each request runs in a
worker thread via `asyncio.to_thread`. The database and container are created, if missing, on
first use. `stats` counts requests and the request charge (`x-ms-request-charge`) by kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable
from types import EllipsisType
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey
from azure.cosmos._retry_options import RetryOptions
from azure.cosmos.documents import ConnectionPolicy
from azure.cosmos.exceptions import CosmosHttpResponseError
from urllib3.exceptions import InsecureRequestWarning

from runtime import errors
from runtime.backends.blob import BlobStore
from runtime.journal import runs as run_index
from runtime.journal.keyhash import Scope, key_hash
from runtime.journal.store import CRASHED, ActorLease, Commit, Envelope, JournalConflict

__all__ = ["MAX_ITEM_BYTES", "CosmosJournal"]

log = logging.getLogger(__name__)

MAX_ITEM_BYTES = 1_500_000
"""Largest item this journal writes (Cosmos refuses items over 2 MB)."""
MIN_BLOB_BYTES = 1024
"""Values smaller than this are never moved to the blob store."""
MAX_ID_BYTES = 1000
"""Cosmos ids are limited to 1023 bytes; longer message ids are stored under their hash."""
REPAIR_AFTER_S = 10.0
"""An inbox entry still without a number this long after its create was cut off: settle
numbers it."""
COMMIT_MARGIN_S = 3600.0
"""Commits outlive the tombstones of the messages they completed by this much."""
READY_BASE = 2**52
"""A ready actor's `due_key` is its arrival in µs minus this: negative, exact, oldest first."""
SCHED_ID = "s"

_T = TypeVar("_T")
PathPart = str | int
Path = tuple[PathPart, ...]
INF = float("inf")

_ID_ESCAPES = {c: f"%{ord(c):02X}" for c in "%/\\?#"}
_SAFE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_NOT_CONSUMED = "FROM c WHERE IS_NULL(c.consumed_at)"
_NOT_NUMBERED = "FROM c WHERE IS_NULL(c.n)"
_PENDING = "c.type = 'inbox' AND IS_NULL(c.consumed_at)"
_INDEXING = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/body/?"}, {"path": "/blobs/*"}, {"path": '/"_etag"/?'}],
}


def _replace_if_unchanged(item: dict[str, Any],
                          etag: str | None) -> Callable[[ContainerProxy], Any]:
    def replace(container: ContainerProxy) -> Any:
        return container.replace_item(item["id"], item, etag=etag,
                                      match_condition=MatchConditions.IfNotModified)

    return replace


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




class _Throttled(Exception):
    def __init__(self, delay: float | None, exc: CosmosHttpResponseError) -> None:
        super().__init__(str(exc))
        self.delay = delay
        self.exc = exc


class CosmosJournal:
    """The journal on a Cosmos DB SQL-API container (see the module docstring)."""

    def __init__(self, endpoint: str, key: str, *, database: str = "loom",
                 container: str = "journal", verify_tls: bool = True,
                 blob: BlobStore | None = None, max_item_bytes: int = MAX_ITEM_BYTES,
                 timeout: float = 30.0, poll_interval_s: float = 1.0,
                 max_throttle_wait_s: float = 30.0, tombstone_ttl_s: float = 7 * 86400.0,
                 compact_every: int = 64, commit_margin_s: float = COMMIT_MARGIN_S) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise errors.SettingsInvalid(
                f"Cosmos endpoint must be https://<host>[:<port>], got {endpoint!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.url = f"cosmos://{host}:{port}/{database}/{container}"
        self.consumes_with_append = False  # inbox items are other documents
        self.endpoint = f"{parts.scheme}://{host}:{port}/"
        self.database = database
        self.container = container
        self.verify_tls = verify_tls
        self.blob = blob
        self.max_item_bytes = max_item_bytes
        self.timeout = timeout
        self.poll_interval_s = poll_interval_s
        self.max_throttle_wait_s = max_throttle_wait_s
        self.tombstone_ttl_s = tombstone_ttl_s
        self.compact_every = compact_every
        self._state_seqs: dict[str, int] = {}  # actor -> its last state commit seen here
        self.commit_margin_s = commit_margin_s
        self.stats: defaultdict[str, float] = defaultdict(float)
        """Requests (`requests`, `requests:<op>`) and request charge (`charge`,
        `charge:<op>`) sent so far, from the response headers."""
        self._key = key
        self._client: CosmosClient | None = None
        self._container: ContainerProxy | None = None
        self._init_lock = threading.Lock()
        self._arrival_lock = threading.Lock()
        self._last_arrival = 0
        self._distinct = True  # the emulator's SQL has no DISTINCT; found out on first use
        self._held: dict[str, set[str]] = {}  # owner -> actors leased through this object
        self._returned: dict[str, set[int]] = {}  # actor -> numbers inbox() returned, pending
        self._poll_at = 0.0  # monotonic time of the next cross-partition due query
        self._hint = -INF  # earliest due time known here (journal clock); -INF: query now
        self._held_at: tuple[int, list[int]] | None = None  # the partitions of that query
        self._owners: tuple[float, dict[str, int]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # actor -> (run message id, its run row, the row item's etag) as this object last
        # wrote it: the next commit of a warm actor updates its row without reading it
        self._run_rows: dict[str, tuple[str, run_index.Run, str]] = {}

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

    def _count(self, response: Any) -> None:
        try:
            headers = response.http_response.headers
            charge = float(headers.get("x-ms-request-charge") or 0.0)
        except (AttributeError, ValueError):
            charge = 0.0
        op = getattr(self._op, "name", "other")
        self.stats["requests"] += 1
        self.stats[f"requests:{op}"] += 1
        self.stats["charge"] += charge
        self.stats[f"charge:{op}"] += charge

    def _connect(self) -> ContainerProxy:
        if not self.verify_tls:  # an explicit, documented opt-out (the loopback emulator)
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        policy = ConnectionPolicy()
        policy.RetryOptions = RetryOptions(max_retry_attempt_count=0)  # 429s: see _call
        try:
            client = CosmosClient(self.endpoint, credential=self._key,
                                  connection_verify=self.verify_tls,
                                  connection_timeout=self.timeout,
                                  connection_policy=policy,
                                  raw_response_hook=self._count,
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
                    op = getattr(self._op, "name", None)
                    self._op.name = "connect"
                    try:
                        self._container = self._connect()
                    finally:
                        self._op.name = op
        return self._container

    _op = threading.local()

    def _sync(self, op: str, actor: str | None, fn: Callable[[ContainerProxy], _T],
              expect: tuple[int, ...]) -> _T:
        self._op.name = op
        try:
            return fn(self._c())
        except errors.LoomError:
            raise
        except CosmosHttpResponseError as exc:
            if exc.status_code == 429:
                after = (exc.headers or {}).get("x-ms-retry-after-ms")
                try:
                    delay = float(after) / 1000.0 if after is not None else None
                except ValueError:
                    delay = None
                raise _Throttled(delay, exc) from None
            if exc.status_code in expect:
                raise
            self._fail(op, actor, exc)
        except AzureError as exc:
            self._fail(op, actor, exc)

    async def _call(self, op: str, actor: str | None, fn: Callable[[ContainerProxy], _T],
                    expect: tuple[int, ...] = ()) -> _T:
        """One request (or one query, all pages) in a worker thread. A 429 waits what the
        server asks (`x-ms-retry-after-ms`) and tries again, for `max_throttle_wait_s` in
        all; other HTTP errors in `expect` come back as `CosmosHttpResponseError`, the rest
        as `StorageError`."""
        waited, attempt = 0.0, 0
        while True:
            try:
                return await asyncio.to_thread(self._sync, op, actor, fn, expect)
            except _Throttled as throttled:
                attempt += 1
                delay = throttled.delay
                if delay is None:
                    delay = min(1.0, 0.01 * 2 ** attempt) * (0.5 + random.random() / 2)
                if waited + delay > self.max_throttle_wait_s:
                    raise errors.StorageError(
                        f"Cosmos {op}" + (f" for actor {actor!r}" if actor else "") +
                        f" on {self.url} was throttled (HTTP 429) for {waited:.1f} s "
                        f"({attempt} attempts); giving up",
                        details={"status": 429, "actor": actor, "op": op,
                                 "waited_s": waited}) from throttled.exc
                self.stats["throttled"] += 1
                await asyncio.sleep(delay)
                waited += delay

    @staticmethod
    def _query(c: ContainerProxy, sql: str, partition: str | None,
               **params: Any) -> Iterable[Any]:
        """Run `sql` in one actor's partition (the filter on `c.actor` is added here: the
        emulator wants it), or across partitions if `partition` is None."""
        if partition is not None:
            sql = sql.replace("FROM c WHERE ", "FROM c WHERE c.actor = @actor AND ", 1)
            params = {**params, "actor": partition}
        parameters: list[dict[str, Any]] = [{"name": f"@{k}", "value": v}
                                            for k, v in params.items()]
        if partition is None:
            return c.query_items(sql, parameters=parameters, enable_cross_partition_query=True)
        return c.query_items(sql, parameters=parameters, partition_key=partition)

    async def _read(self, op: str, actor: str, item_id: str) -> dict[str, Any] | None:
        """A point read; None if there is no such item."""
        def read(c: ContainerProxy) -> dict[str, Any] | None:
            try:
                return dict(c.read_item(item_id, partition_key=actor))
            except CosmosHttpResponseError as exc:
                if exc.status_code == 404:
                    return None
                # @vercel/cosmosdb-server answers a read of a missing item with this 500
                if exc.status_code == 500 and "of undefined (reading" in str(exc.message):
                    return None
                raise

        return await self._call(op, actor, read)

    async def _rows(self, op: str, sql: str, partition: str | None,
                    **params: Any) -> list[Any]:
        return await self._call(op, partition,
                                lambda c: list(self._query(c, sql, partition, **params)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        run = commit.get("run")
        done = run.get("msg") if "kind" in commit and isinstance(run, dict) else None
        meta = {"id": f"c:{seq:012d}", "actor": actor, "seq": seq, "type": "commit",
                "has_state": "state" in commit, "done": done}
        item = await asyncio.to_thread(self._encode, commit, meta, _commit_paths(commit), what,
                                       f"journal/{_key_part(str(actor))}/{seq}")
        try:
            await self._call("append", actor, lambda c: c.create_item(item), expect=(409,))
        except CosmosHttpResponseError:
            raise JournalConflict(f"{what} already exists") from None
        if isinstance(commit.get("run"), dict):
            try:
                await self._index_run(commit)
            except errors.StorageError as exc:  # the commit stands; its next commit repairs
                self.stats["run_index_lagging"] += 1
                log.warning("run index of %s#%s on %s lags: %s", actor, seq, self.url, exc)
        if self._compaction_due(commit):
            self._spawn(self._compact_quietly(actor))

    def _compaction_due(self, commit: Commit) -> bool:
        """Whether this state commit (snapshot or delta) passed a multiple of compact_every
        in its actor's seq since the last one seen here (or since its run started): runs
        of any length reach one, even if none of their completing commits falls on it."""
        actor, seq, every = commit["actor"], commit["seq"], self.compact_every
        if every <= 0 or not isinstance(seq, int) or not ("state" in commit or
                                                          "delta" in commit):
            return False
        run = commit.get("run")
        start = run.get("start", seq) if isinstance(run, dict) else seq
        before = self._state_seqs.pop(actor, max(0, start - 1 if isinstance(start, int)
                                                 else seq - 1))
        self._state_seqs[actor] = seq
        if len(self._state_seqs) > 65_536:  # the oldest actor seen falls back to its run
            self._state_seqs.pop(next(iter(self._state_seqs)))
        return seq > 0 and seq // every > before // every

    # -- the run index -------------------------------------------------------------------------
    # One item per run, `{"id": "r:<msg>", "type": "run", "actor", "msg", "atype", "ident",
    # "status", "started", "ended", "last_seq", "activities", "body"}` in the actor's
    # partition, written after the commit (Cosmos has no transaction across the two items
    # that the emulator honours), so it may lag: a run item whose `last_seq` is behind is
    # caught up from the commits at the actor's next commit, and a write is an if-match
    # replace, so a slow writer never takes a row back.
    @staticmethod
    def _run_item(row: run_index.Run) -> dict[str, Any]:
        return {"id": _item_id("r", row["msg"]), "actor": row["actor"], "type": "run",
                "msg": row["msg"], "atype": row["type"],
                "ident": row["actor"].partition("/")[2], "status": row["status"],
                "started": row["started"], "ended": row["ended"], "last_seq": row["last_seq"],
                "activities": row["activities"], "body": _dumps(row)}

    async def _write_run(self, row: run_index.Run, etag: str | None) -> str | None:
        """Create the run item (etag None) or replace it if unchanged; its new etag, or
        None if another writer got there first."""
        item = self._run_item(row)

        def write(c: ContainerProxy) -> Any:
            if etag is None:
                return c.create_item(item)
            return c.replace_item(item["id"], item, etag=etag,
                                  match_condition=MatchConditions.IfNotModified)

        try:
            done = await self._call("run_index", row["actor"], write, expect=(404, 409, 412))
        except CosmosHttpResponseError:
            return None
        return str(done.get("_etag")) if isinstance(done, dict) else ""

    def _remember_run(self, actor: str, row: run_index.Run, etag: str) -> None:
        self._run_rows.pop(actor, None)
        self._run_rows[actor] = (row["msg"], row, etag)
        if len(self._run_rows) > 10_000:
            self._run_rows.pop(next(iter(self._run_rows)))

    async def _index_run(self, commit: Commit) -> None:
        actor, seq = str(commit["actor"]), int(commit["seq"])
        msg = str(commit["run"]["msg"])
        known = self._run_rows.get(actor)
        if known is not None and known[1]["last_seq"] == seq - 1:
            # this object indexed the commit before: nothing can be lagging
            before, etag = (known[1], known[2]) if known[0] == msg else (None, None)
            row = run_index.fold(before, commit)
            if row is not None:
                new_etag = await self._write_run(row, etag)
                if new_etag is not None:
                    self._remember_run(actor, row, new_etag)
                    return
        await self.repair_runs(commit)

    async def repair_runs(self, commit: Commit) -> None:
        """Bring the run items of `commit`'s run and of the run before it (whose last index
        write may have been lost) in line with the commits, up to `commit`."""
        actor, seq = str(commit["actor"]), int(commit["seq"])
        start = int(commit["run"].get("start", seq))
        tail = await self._commits("run_index", actor, " AND c.seq >= @low AND c.seq < @seq",
                                   low=max(0, start - 1), seq=seq)
        runs: list[tuple[str, list[Commit]]] = []
        prev = tail[0] if tail and tail[0]["seq"] == start - 1 else None
        if prev is not None and isinstance(prev.get("run"), dict):
            runs.append((str(prev["run"]["msg"]), [prev]))
        msg = str(commit["run"]["msg"])
        runs.append((msg, [c for c in tail if c["seq"] >= start] + [commit]))
        for i, (run_msg, commits) in enumerate(runs):
            current = i == len(runs) - 1
            for _attempt in range(16):
                raw = await self._read("run_index", actor, _item_id("r", run_msg))
                before: run_index.Run | None = (None if raw is None
                                                else json.loads(raw["body"]))
                first = commits[0]
                missing = (int(first["run"].get("start", first["seq"])) if before is None
                           else int(before["last_seq"]) + 1)
                extra = [] if missing >= first["seq"] else await self._commits(
                    "run_index", actor, " AND c.seq >= @low AND c.seq < @seq", low=missing,
                    seq=first["seq"])
                row = before
                for c in [*extra, *commits]:
                    run = c.get("run")
                    if isinstance(run, dict) and str(run.get("msg")) == run_msg:
                        row = run_index.fold(row, c)
                if row is None:
                    break
                if row is before:
                    if raw is not None and current:
                        self._remember_run(actor, row, str(raw.get("_etag")))
                    break
                etag = await self._write_run(row, None if raw is None else raw.get("_etag"))
                if etag is not None:
                    if current:
                        self._remember_run(actor, row, etag)
                    break

    async def runs(self, *, type: str | None = None, status: str | None = None,
                   activity: str | None = None, id_prefix: str | None = None,
                   started_after: float | None = None, started_before: float | None = None,
                   ended_after: float | None = None, ended_before: float | None = None,
                   limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        """One cross-partition query on run items, `ORDER BY c.started DESC` (a single
        field: no composite index needed), plus one for the rows tied with the page's last
        start time, so the page is exact in (started, actor, msg) order."""
        key = run_index.check(status, limit, after)
        where = ["c.type = 'run'"]
        params: dict[str, Any] = {}
        for name, cond, value in (
                ("atype", "c.atype = @atype", type), ("status", "c.status = @status", status),
                ("act", "ARRAY_CONTAINS(c.activities, @act)", activity),
                ("prefix", "STARTSWITH(c.ident, @prefix)", id_prefix),
                ("sa", "c.started >= @sa", started_after),
                ("sb", "c.started < @sb", started_before),
                ("ea", "c.ended >= @ea", ended_after), ("eb", "c.ended < @eb", ended_before)):
            if value is not None:
                where.append(cond)
                params[name] = value
        if key is not None:
            where.append("(c.started < @ks OR (c.started = @ks AND (c.actor < @ka OR "
                         "(c.actor = @ka AND c.msg < @km))))")
            params.update(ks=key[0], ka=key[1], km=key[2])
        cond = " AND ".join(where)
        rows = await self._rows("runs", f"SELECT TOP @top c.body FROM c WHERE {cond} "
                                "ORDER BY c.started DESC", None, top=limit + 1, **params)
        found = [json.loads(r["body"]) for r in rows]
        if key is not None:
            found = [r for r in found if run_index.order(r) < key]
        if len(rows) > limit:  # rows tied with the last start time may sort in between
            last = min(r["started"] for r in found) if found else key[0] if key else 0.0
            ties = await self._rows("runs", f"SELECT c.body FROM c WHERE {cond} AND "
                                    "c.started = @tie", None, tie=last, **params)
            seen = {(r["actor"], r["msg"]) for r in found}
            for t in ties:
                r = json.loads(t["body"])
                if (r["actor"], r["msg"]) not in seen and (key is None or
                                                           run_index.order(r) < key):
                    found.append(r)
        found.sort(key=run_index.order, reverse=True)
        return [run_index.shown(r) for r in found[:limit]]

    def _decoded(self, actor: str, rows: list[Any]) -> list[Commit]:
        ordered = sorted(rows, key=lambda r: r["seq"])
        return [self._decode(r, f"commit {actor}#{r['seq']}") for r in ordered]

    async def _commits(self, op: str, actor: str, cond: str, **params: Any) -> list[Commit]:
        rows = await self._rows(op, "SELECT c.seq, c.body, c.blobs FROM c WHERE "
                                f"c.type = 'commit'{cond}", actor, **params)
        return await asyncio.to_thread(self._decoded, actor, rows)

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        return await self._commits("read", actor, " AND c.seq > @after", after=after_seq)

    async def read_tail(self, actor: str) -> list[Commit]:
        rows = await self._rows("read_tail", "SELECT VALUE MAX(c.seq) FROM c WHERE "
                                "c.type = 'commit' AND c.has_state = true", actor)
        last = [r for r in rows if isinstance(r, int | float) and not isinstance(r, bool)]
        if not last:
            return await self._commits("read_tail", actor, "")
        return await self._commits("read_tail", actor, " AND c.seq >= @start", start=last[0])

    async def outcome(self, actor: str, msg_id: str) -> Commit | None:
        rows = await self._rows("outcome", "SELECT c.seq, c.body, c.blobs FROM c WHERE "
                                "c.type = 'commit' AND c.done = @msg", actor, msg=str(msg_id))
        found = await asyncio.to_thread(self._decoded, actor, rows)
        return found[-1] if found else None

    # -- inbox -----------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        actor, mid = envelope["target"], envelope["id"]
        deliver_at = float(envelope.get("deliver_at", 0.0))
        item_id = _item_id("i", mid)
        meta = {"id": item_id, "actor": actor, "type": "inbox", "mid": str(mid),
                "kind": envelope.get("kind") or "call", "n": None, "deliver_at": deliver_at,
                "consumed_at": None, "at": time.time()}
        what = f"message {mid} to {actor}"
        paths: list[Path] = [("payload",)] if _has(envelope, ("payload",)) else []
        item = await asyncio.to_thread(self._encode, envelope, meta, paths, what,
                                       f"journal/{_key_part(str(actor))}/inbox")
        try:
            await self._call("enqueue", actor, lambda c: c.create_item(item), expect=(409,))
        except CosmosHttpResponseError:
            # Seen before. If its enqueue was cut off before numbering it, finish that.
            old = await self._read("enqueue", actor, item_id)
            if old is None:
                return False
            if old.get("n") is None and old.get("consumed_at") is None:
                await self._number(actor, item_id, float(old.get("deliver_at") or 0.0))
            return False
        await self._number(actor, item_id, deliver_at)
        return True

    async def _number(self, actor: str, item_id: str, deliver_at: float) -> None:
        """Give the entry the next inbox number and make the actor due at `deliver_at`."""
        n = await self._reserve(actor, deliver_at)
        await self._write_number(actor, item_id, n)
        if deliver_at > 0:
            self._hint = min(self._hint, deliver_at)

    async def _reserve(self, actor: str, deliver_at: float) -> int:
        taken: list[int] = []

        def change(row: dict[str, Any] | None) -> dict[str, Any]:
            row = self._row_for(actor, row)
            row["last_n"] = int(row.get("last_n") or 0) + 1
            taken[:] = [row["last_n"]]
            due = row.get("due_at")
            self._set_due(row, deliver_at if due is None else min(float(due), deliver_at))
            return row

        await self._update("enqueue", actor, change)
        return taken[0]

    async def _write_number(self, actor: str, item_id: str, n: int) -> None:
        # A 412: numbered meanwhile by a repair; that number stands, this one is a gap.
        with contextlib.suppress(CosmosHttpResponseError):
            await self._call("enqueue", actor, lambda c: c.patch_item(
                item_id, partition_key=actor,
                patch_operations=[{"op": "set", "path": "/n", "value": n}],
                filter_predicate=_NOT_NUMBERED), expect=(404, 412))

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        base = (f"FROM c WHERE {_PENDING} AND NOT IS_NULL(c.n) AND c.deliver_at <= @now")
        cols = "SELECT c.n, c.mid, c.body, c.blobs"
        def by_n(rows: list[Any]) -> list[Any]:
            return sorted(rows, key=lambda r: r["n"])

        if calls is None:
            rows = by_n(await self._rows("inbox", f"{cols} {base}", actor, now=now))
        else:  # events and timers first, then at most `calls` call messages
            rows = by_n(await self._rows("inbox", f"{cols} {base} AND c.kind != 'call'", actor,
                                         now=now))
            if calls > 0:  # only the first `calls` call messages are read (and decoded)
                rows += by_n(await self._rows(
                    "inbox", f"SELECT TOP @k c.n, c.mid, c.body, c.blobs {base} AND "
                    "c.kind = 'call' ORDER BY c.n", actor, now=now, k=int(calls)))

        def decode() -> list[Envelope]:
            out = []
            for r in rows:
                doc = self._decode(r, f"message {r['mid']} to {actor}")
                doc["n"] = r["n"]
                out.append(doc)
            return out

        docs = await asyncio.to_thread(decode)
        if docs:
            self._returned.setdefault(actor, set()).update(int(d["n"]) for d in docs)
        return docs

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        async def one(mid: str) -> None:
            with contextlib.suppress(CosmosHttpResponseError):  # absent / already consumed
                await self._call("consume", actor, lambda c: c.patch_item(
                    _item_id("i", mid), partition_key=actor,
                    patch_operations=[{"op": "set", "path": "/consumed_at", "value": now}],
                    filter_predicate=_NOT_CONSUMED), expect=(404, 412))

        await asyncio.gather(*(one(mid) for mid in dict.fromkeys(ids)))

    # -- the schedule row --------------------------------------------------------------------
    @classmethod
    def _row_for(cls, actor: str, row: dict[str, Any] | None) -> dict[str, Any]:
        """The row to change: a new one, or `row` (given its key hash if written before
        rows had one)."""
        if row is None:
            return cls._new_row(actor)
        if "hash_hi" not in row:
            row["hash_hi"], row["hash_lo"] = key_hash(actor)
        return row

    @staticmethod
    def _new_row(actor: str) -> dict[str, Any]:
        hi, lo = key_hash(actor)
        return {"id": SCHED_ID, "actor": actor, "type": "sched", "last_n": 0, "due_at": None,
                "due_key": None, "owner": None, "lease_until": 0.0, "epoch": 0,
                "hash_hi": hi, "hash_lo": lo}

    def _arrival(self) -> int:
        with self._arrival_lock:
            self._last_arrival = max(time.time_ns() // 1000, self._last_arrival + 1)
            return self._last_arrival

    def _set_due(self, row: dict[str, Any], due: float | None) -> None:
        if due is None:
            row["due_at"] = row["due_key"] = None
        elif due <= 0:
            if row.get("due_at") != 0 or row.get("due_key") is None:  # keeps its place
                row["due_key"] = self._arrival() - READY_BASE
            row["due_at"] = 0.0
        else:
            row["due_at"] = row["due_key"] = float(due)

    async def _update(self, op: str, actor: str,
                      change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
                      between: Callable[[], Any] | None = None) -> bool:
        """Read the schedule row, (await `between()`,) apply `change` (the new row, or None
        to write nothing) and write it back if nobody changed it meanwhile; on a lost race
        start again. True if written."""
        for attempt in range(64):
            raw = await self._read(op, actor, SCHED_ID)
            etag = raw.get("_etag") if raw is not None else None
            row = None if raw is None else {k: v for k, v in raw.items()
                                            if not k.startswith("_")}
            if between is not None:
                await between()
            new = change(row)
            if new is None:
                return False
            try:
                await self._call(op, actor, self._writer(new, etag), expect=(404, 409, 412))
                return True
            except CosmosHttpResponseError:
                await asyncio.sleep(random.random() * 0.002 * min(attempt, 10))
        raise errors.StorageError(f"Cosmos {op} for actor {actor!r} on {self.url}: the "
                                  "schedule row kept changing under 64 attempts",
                                  details={"actor": actor, "op": op})

    @staticmethod
    def _writer(row: dict[str, Any], etag: str | None) -> Callable[[ContainerProxy], Any]:
        """Create the row, or replace it if its etag is still `etag`."""
        def write(c: ContainerProxy) -> Any:
            if etag is None:
                return c.create_item(row)
            return c.replace_item(SCHED_ID, row, etag=etag,
                                  match_condition=MatchConditions.IfNotModified)
        return write

    # -- schedule and ownership --------------------------------------------------------------
    def _free(self, owner: str | None, versions: Collection[str] | None = None,
              scope: Scope | None = None) -> str:
        free = "" if owner is None else \
            " AND (IS_NULL(c.owner) OR c.owner = @owner OR c.lease_until < @now)"
        if versions is not None:
            free += " AND (NOT IS_DEFINED(c.ver) OR IS_NULL(c.ver) OR ARRAY_CONTAINS(@vers, c.ver))"
        if scope is not None:  # the hash's partition, from its halves (see keyhash.py)
            free += (" AND (NOT IS_DEFINED(c.hash_hi) OR ARRAY_CONTAINS(@parts, "
                     "((c.hash_hi % @pn) * @pm + c.hash_lo % @pn) % @pn))")
        return free

    async def due_actors(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str] | None = None,
                         scope: Scope | None = None) -> list[str]:
        mono = time.monotonic()
        held = None if scope is None else (scope.partitions, sorted(scope.held))
        if limit <= 0 or (mono < self._poll_at and now < self._hint and held == self._held_at):
            return []  # (what the last query found holds for the same partitions only)
        self._poll_at, self._held_at = mono + self.poll_interval_s, held
        params: dict[str, Any] = {"k": limit + 1, "now": now}
        if owner is not None:
            params["owner"] = owner
        if versions is not None:
            params["vers"] = sorted(versions)
        if held is not None:
            params["pn"], params["pm"], params["parts"] = held[0], (1 << 32) % held[0], held[1]
        # Scoped, the partition filter has no index: `TOP k+1` would read about k x P / held
        # rows, most of them future ones. So the due ones are read up to now, and the next
        # due time (the hint) apart, with `TOP 1`: about P / held rows.
        bound = "" if held is None else " AND c.due_key <= @now"
        free = self._free(owner, versions, scope)
        rows = await self._rows(
            "due_actors", "SELECT TOP @k c.actor, c.due_key FROM c WHERE c.type = 'sched' AND "
            f"NOT IS_NULL(c.due_key){bound}{free} ORDER BY c.due_key", None, **params)
        rows.sort(key=lambda r: r["due_key"])
        due = [r for r in rows if r["due_key"] <= now][:limit]
        later = [r["due_key"] for r in rows if r["due_key"] > now]
        if held is not None and len(rows) <= limit:
            later = [k for k in await self._rows(
                "due_actors", "SELECT TOP 1 VALUE c.due_key FROM c WHERE c.type = 'sched' AND "
                f"c.due_key > @now{free} ORDER BY c.due_key", None,
                **{k: v for k, v in params.items() if k != "k"})
                if isinstance(k, int | float) and not isinstance(k, bool)]
        self._hint = later[0] if later else (INF if len(rows) <= limit else now)
        out = [r["actor"] for r in due]
        if len(due) >= limit:  # a full page: look again next time
            self._poll_at = mono
            self._hint = now
            if all(r["due_key"] < 0 for r in due):  # ready actors must not starve timers
                params["k"] = limit
                timed = await self._rows(
                    "due_actors", "SELECT TOP @k c.actor, c.due_key FROM c WHERE c.type = "
                    f"'sched' AND c.due_key > 0 AND c.due_key <= @now{free} "
                    "ORDER BY c.due_key", None, **params)
                timed.sort(key=lambda r: r["due_key"])
                out += [r["actor"] for r in timed]
        return list(dict.fromkeys(out))

    async def due_pinned(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str]) -> list[tuple[str, str]]:
        if not versions:
            return []
        params: dict[str, Any] = {"k": limit, "now": now, "vers": sorted(versions)}
        if owner is not None:
            params["owner"] = owner
        rows = await self._rows(
            "due_pinned", "SELECT TOP @k c.actor, c.ver, c.due_key FROM c WHERE c.type = 'sched'"
            " AND NOT IS_NULL(c.due_key) AND c.due_at <= @now AND IS_DEFINED(c.ver) AND "
            f"ARRAY_CONTAINS(@vers, c.ver){self._free(owner)} ORDER BY c.due_key", None,
            **params)
        rows.sort(key=lambda r: r["due_key"])
        return [(r["actor"], r["ver"]) for r in rows]

    async def next_due(self, now: float, *,
                       versions: Collection[str] | None = None) -> float | None:
        """The earliest future due time this journal knows of (from its last schedule query
        and its own writes); never a query of its own."""
        return self._hint if now < self._hint < INF else None

    async def acquire(self, actor: str, owner: str, now: float, ttl: float
                      ) -> ActorLease | None:
        got: list[ActorLease] = []

        def change(row: dict[str, Any] | None) -> dict[str, Any] | None:
            row = self._row_for(actor, row)
            if row.get("owner") not in (None, owner) and float(row["lease_until"]) >= now:
                return None
            taken = row.get("owner") not in (None, owner) or (
                row.get("owner") is None and float(row.get("lease_until") or 0.0) == CRASHED)
            if row.get("owner") != owner:
                row["epoch"] = int(row.get("epoch") or 0) + 1
                row["owner"] = owner
            row["lease_until"] = now + ttl
            got[:] = [ActorLease(int(row["epoch"]), taken)]
            return row

        if not await self._update("acquire", actor, change):
            return None
        self._held.setdefault(owner, set()).add(actor)
        return got[0]

    async def renew(self, owner: str, now: float, ttl: float) -> set[str]:
        until = now + ttl
        held = self._held.get(owner, set())

        async def one(actor: str) -> bool:
            kept: list[bool] = [False]

            def change(row: dict[str, Any] | None) -> dict[str, Any] | None:
                kept[0] = row is not None and row.get("owner") == owner
                if row is None or not kept[0]:
                    return None
                if row.get("due_at") is not None and row["due_at"] == row["lease_until"]:
                    self._set_due(row, until)
                row["lease_until"] = until
                return row

            await self._update("renew", actor, change)
            return kept[0]

        actors = sorted(held)
        kept: set[str] = set()
        for i in range(0, len(actors), 32):
            batch = actors[i:i + 32]
            for actor, ok in zip(batch, await asyncio.gather(*(one(a) for a in batch)),
                                 strict=True):
                if ok:
                    kept.add(actor)
                else:
                    held.discard(actor)
        return kept

    async def settle(self, actor: str, owner: str, *, now: float, seen_n: int, busy: bool,
                     release: bool = False, version: str | EllipsisType | None = ...) -> None:
        pending: list[Any] = []
        repairs: list[tuple[str, float]] = []
        returned = self._returned.get(actor)
        settled: list[float | None] = [None]
        unchanged = [False]

        async def read_inbox() -> None:
            pending[:] = await self._rows(
                "settle", f"SELECT c.id, c.n, c.kind, c.deliver_at, c.at FROM c WHERE "
                f"{_PENDING}", actor)

        def change(row: dict[str, Any] | None) -> dict[str, Any] | None:
            repairs.clear()
            if row is None or row.get("owner") != owner:
                return None
            before = dict(row)
            wall = time.time()
            due = INF
            for r in pending:
                n = r.get("n")
                if n is None and float(r.get("at") or 0.0) < wall - REPAIR_AFTER_S:
                    repairs.append((r["id"], float(r["deliver_at"])))
                unseen = n is None or n > seen_n or (returned is not None and n not in returned)
                if r["deliver_at"] > now or (unseen and not (busy and r["kind"] == "call")):
                    due = min(due, float(r["deliver_at"]))
            if repairs:
                return None
            if release:
                row["owner"] = None
                row["lease_until"] = 0.0
            elif busy:
                due = min(due, float(row["lease_until"]))
            settled[0] = None if due == INF else due
            self._set_due(row, settled[0])
            if not isinstance(version, EllipsisType) and (version or row.get("ver")):
                row["ver"] = version
            if row == before:  # nothing to change: no write
                unchanged[0] = True
                return None
            return row

        # The row is read before the inbox and replaced only if unchanged: an entry numbered
        # after the inbox read changed the row, so the replace fails and looks again.
        for _ in range(8):
            unchanged[0] = False
            written = await self._update("settle", actor, change, between=read_inbox)
            written = written or unchanged[0]
            if not repairs:
                break
            for item_id, deliver_at in repairs:  # an enqueue cut off before numbering
                await self._number(actor, item_id, deliver_at)
        if not written or release:
            if not written:
                self._held.get(owner, set()).discard(actor)
            self._returned.pop(actor, None)
            if not written:
                return
        elif returned is not None:
            returned &= {r["n"] for r in pending}
        if settled[0] is not None:
            self._hint = min(self._hint, settled[0])

    # -- deliveries and dead letters -----------------------------------------------------------
    async def bump_delivery(self, actor: str, msg_id: str, at_seq: int) -> int:
        """Read the inbox entry and replace it with one more delivery, if no one changed it
        meanwhile (etag); a consumed or missing entry counts 0."""
        item_id = _item_id("i", msg_id)
        for attempt in range(20):
            raw = await self._read("bump_delivery", actor, item_id)
            if raw is None or raw.get("consumed_at") is not None:
                return 0
            etag = raw.get("_etag")
            item = {k: v for k, v in raw.items() if not k.startswith("_")}
            same = item.get("delivered_at") == at_seq
            count = int(item.get("deliveries") or 0) + 1 if same else 1
            item["deliveries"], item["delivered_at"] = count, at_seq
            try:
                await self._call("bump_delivery", actor, _replace_if_unchanged(item, etag),
                                 expect=(412,))
                return count
            except CosmosHttpResponseError:
                await asyncio.sleep(random.random() * 0.002 * min(attempt, 10))
        raise errors.StorageError(f"delivery count of {actor} {msg_id}: too much contention")

    async def put_dead_letter(self, entry: dict[str, Any]) -> None:
        item = {"id": _item_id("d", entry["msg"]), "actor": entry["actor"], "type": "dlq",
                "at": float(entry.get("at", 0.0)), "body": _dumps(entry)}
        await self._call("put_dead_letter", entry["actor"], lambda c: c.upsert_item(item))

    async def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self._rows("dead_letters", "SELECT c.body, c.at FROM c WHERE "
                                "c.type = 'dlq'", None)
        rows.sort(key=lambda r: r.get("at") or 0.0)
        return [json.loads(r["body"]) for r in rows[:limit]]

    async def drop_dead_letter(self, actor: str, msg_id: str) -> bool:
        try:
            await self._call("drop_dead_letter", actor, lambda c: c.delete_item(
                _item_id("d", msg_id), partition_key=actor), expect=(404,))
            return True
        except CosmosHttpResponseError:
            return False

    async def run_versions(self) -> dict[str, int]:
        rows = await self._rows("run_versions", "SELECT VALUE c.ver FROM c WHERE c.type = "
                                "'sched' AND IS_DEFINED(c.ver) AND NOT IS_NULL(c.ver)", None)
        return dict(Counter(r for r in rows if isinstance(r, str)))

    async def owners(self) -> dict[str, int]:
        cached = self._owners
        if cached is not None and time.monotonic() < cached[0]:
            return dict(cached[1])
        rows = await self._rows("owners", "SELECT VALUE c.owner FROM c WHERE c.type = 'sched' "
                                "AND NOT IS_NULL(c.owner)", None)
        counts = dict(Counter(r for r in rows if isinstance(r, str)))
        self._owners = (time.monotonic() + 10 * self.poll_interval_s, counts)
        return dict(counts)

    async def expire_owner(self, owner: str) -> int:
        rows = await self._rows("expire_owner", "SELECT VALUE c.actor FROM c WHERE "
                                "c.type = 'sched' AND c.owner = @owner", None, owner=owner)

        def change(row: dict[str, Any] | None) -> dict[str, Any] | None:
            if row is None or row.get("owner") != owner:
                return None
            row["owner"] = None
            row["lease_until"] = CRASHED
            if row.get("due_at") is not None:
                self._set_due(row, 0.0)
            return row

        expired = 0
        for actor in rows:
            if await self._update("expire_owner", actor, change):
                expired += 1
        self._held.pop(owner, None)
        self._owners = None
        self._hint = -INF
        return expired

    # -- listing and upkeep ------------------------------------------------------------------
    async def actors(self, prefix: str = "") -> list[str]:
        where = "FROM c WHERE c.type = 'commit' AND STARTSWITH(c.actor, @prefix)"
        if self._distinct:
            try:
                return sorted(set(await self._call("actors", None, lambda c: list(self._query(
                    c, f"SELECT DISTINCT VALUE c.actor {where}", None, prefix=prefix)),
                    expect=(400,))))
            except CosmosHttpResponseError:
                self._distinct = False
        return sorted(set(await self._rows("actors", f"SELECT VALUE c.actor {where}", None,
                                           prefix=prefix)))

    async def _delete(self, op: str, actor: str, item_id: str) -> bool:
        try:
            await self._call(op, actor, lambda c: c.delete_item(item_id, partition_key=actor),
                             expect=(404,))
        except CosmosHttpResponseError:
            return False
        return True

    async def purge_tombstones(self, older_than: float) -> int:
        """Delete tombstones consumed before `older_than`, across partitions (an operator's
        tool; `compact` does it per actor as the journal goes)."""
        rows = await self._rows(
            "purge_tombstones", "SELECT c.id, c.actor FROM c WHERE c.type = 'inbox' AND "
            "NOT IS_NULL(c.consumed_at) AND c.consumed_at < @t", None, t=older_than)
        purged = 0
        for row in rows:
            purged += await self._delete("purge_tombstones", row["actor"], row["id"])
        return purged

    async def compact(self, actor: str, *, now: float | None = None) -> tuple[int, int]:
        """Delete `actor`'s tombstones consumed more than `tombstone_ttl_s` before `now`, and
        its commits older than both its latest state-bearing commit and `tombstone_ttl_s +
        commit_margin_s` (with the blobs they reference). Returns (commits, tombstones)
        deleted. Never touches the latest state-bearing commit or anything after it."""
        now = time.time() if now is None else now
        tombs = await self._rows(
            "compact", "SELECT VALUE c.id FROM c WHERE c.type = 'inbox' AND "
            "NOT IS_NULL(c.consumed_at) AND c.consumed_at < @t", actor,
            t=now - self.tombstone_ttl_s)
        purged = 0
        for item_id in tombs:
            purged += await self._delete("compact", actor, item_id)
        last = [r for r in await self._rows(
            "compact", "SELECT VALUE MAX(c.seq) FROM c WHERE c.type = 'commit' AND "
            "c.has_state = true", actor) if isinstance(r, int | float) and not isinstance(r, bool)]
        if not last:
            return 0, purged
        old = await self._rows(
            "compact", "SELECT c.id, c.blobs FROM c WHERE c.type = 'commit' AND c.seq < @s "
            "AND c._ts < @t", actor, s=last[0],
            t=int(now - self.tombstone_ttl_s - self.commit_margin_s))
        deleted = 0
        for row in old:
            if await self._delete("compact", actor, row["id"]):
                deleted += 1
                for ref in row.get("blobs") or ():
                    if self.blob is not None:
                        with contextlib.suppress(errors.LoomError, OSError):
                            await asyncio.to_thread(self.blob.delete, ref["key"])
        return deleted, purged

    async def _compact_quietly(self, actor: str) -> None:
        try:
            await self.compact(actor)
        except Exception as exc:  # upkeep: the next compaction tries again
            log.warning("compacting %s on %s failed: %s", actor, self.url, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        client, self._client, self._container = self._client, None, None
        if client is not None:
            await asyncio.to_thread(client.close)
