"""The journal: append-only commits per actor and durable inboxes (memory, SQLite, Cosmos)."""

from runtime.journal.factory import open_journal
from runtime.journal.memory import MemoryJournal
from runtime.journal.sqlite import SqliteJournal
from runtime.journal.store import Commit, Envelope, JournalConflict, JournalStore

__all__ = ["Commit", "Envelope", "JournalConflict", "JournalStore", "MemoryJournal",
           "SqliteJournal", "open_journal"]
