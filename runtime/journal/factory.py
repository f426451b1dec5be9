"""Pick the journal from `LOOM_JOURNAL_URL`."""

from __future__ import annotations

from runtime import errors
from runtime.journal.store import JournalStore
from runtime.settings import LoomSettings


def open_journal(settings: LoomSettings) -> JournalStore:
    url = settings.resolved_journal_url
    if url == "memory://":
        from runtime.journal.memory import MemoryJournal
        return MemoryJournal()
    if url.startswith("sqlite:///"):
        from runtime.journal.sqlite import PROCESS_AFTER, SqliteJournal
        return SqliteJournal(url[len("sqlite:///"):], synchronous=settings.sqlite_synchronous,
                             tombstone_ttl_s=settings.tombstone_ttl_s,
                             writer_process_after=PROCESS_AFTER
                             if settings.sqlite_writer_process else None)
    if url.startswith("cosmos://") or url.startswith("https://"):
        key = settings.cosmos_key
        if key is None:
            raise errors.SettingsInvalid("a Cosmos journal needs LOOM_COSMOS_KEY")
        from runtime.backends.factory import open_blob_store
        from runtime.journal.cosmos import CosmosJournal
        endpoint = url.replace("cosmos://", "https://", 1)
        return CosmosJournal(endpoint, key.get_secret_value(), database=settings.cosmos_database,
                             container=settings.cosmos_container,
                             verify_tls=settings.cosmos_verify_tls,
                             tombstone_ttl_s=settings.tombstone_ttl_s,
                             blob=open_blob_store(settings))
    raise errors.SettingsInvalid(f"LOOM_JOURNAL_URL={url!r}: expected memory://, "
                                 "sqlite:///<path> or cosmos://<host>:<port>")
