"""Process settings, read from `LOOM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime import errors


class LoomSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOM_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".loom"), description="Folder for local state and caches.")
    blob_url: str = Field(
        default="",
        description="file://<folder> (default <home>/blobs) or azure://<container>.",
    )
    azure_storage_connection_string: SecretStr | None = None
    cache_dir: Path | None = Field(default=None, description="Compiled modules (<home>/cache).")
    memory_cache_size: int = Field(default=64, ge=1, description="Compiled modules kept in memory.")
    pool_size: int = Field(default=8, ge=0, description="Idle warm instances per activity/tenant.")
    max_threads: int = Field(default=8, ge=1, description="Threads running guests concurrently.")
    epoch_tick_ms: int = Field(default=5, ge=1, le=1000)
    latest_ttl_s: float = Field(default=2.0, ge=0, description="How long 'latest' stays cached.")
    secrets_dir: Path | None = Field(default=None, description="Files <dir>/<NAME> hold secrets.")
    journal_url: str = Field(
        default="", description="sqlite:///<path> (default <home>/loom.db), memory://, "
        "or cosmos://<host>:<port> (HTTPS).")
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL|EXTRA)$")
    sqlite_writer_process: bool = Field(default=True, description="Under load, the SQLite "
                                        "journal's bulk writes run in a child process (off "
                                        "the event loop's GIL); false: all in process.")
    tombstone_ttl_s: float = Field(default=7 * 86400.0, ge=60, description="How long a "
                                   "consumed message id is refused as a duplicate; compaction "
                                   "deletes its tombstone after it, and old commits an hour "
                                   "later.")
    cosmos_key: SecretStr | None = None
    cosmos_database: str = "loom"
    cosmos_container: str = "journal"
    cosmos_verify_tls: bool = True
    breaker_url: str = Field(default="memory://", description="memory:// or redis://host:port/db")
    redis_url: str = Field(default="", description="redis://host:port/db: join a fleet of "
                           "workers sharing the actors by partition (empty: one process).")
    partitions: int | None = Field(default=None, ge=1, le=65536, description="Partition "
                                   "count, fixed when the fleet is created (default 64).")
    lease_ttl_s: float = Field(default=10.0, gt=0, description="Actor and partition lease TTL.")
    max_deliveries: int = Field(default=5, ge=1, description="Activations that may take a "
                                "message up before it is dead-lettered (loom dlq).")
    limits: str = Field(default="", description='Per-activity limits as JSON, e.g. {"http_post": '
                        '{"concurrency": 4, "rate_per_s": 50}}: fleet-wide with LOOM_REDIS_URL.')
    code_version: str = Field(default="", pattern=r"^[A-Za-z0-9._+-]{0,64}$",
                              description="The version `loom worker` reports and pins new runs "
                              "to (default: a hash of the actor module's source).")
    compatible_versions: str = Field(default="", pattern=r"^[A-Za-z0-9._+,-]*$",
                                     description="Comma-separated older versions whose runs "
                                     "this worker may resume besides its own.")
    state_deltas: bool = Field(default=True, description="Completing commits carry what "
                               "changed in the state (0 while a fleet upgrades from a Loom "
                               "that cannot read deltas).")
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or f"file://{self.home / 'blobs'}"

    @property
    def resolved_journal_url(self) -> str:
        return self.journal_url or f"sqlite:///{self.home / 'loom.db'}"

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.home / "cache"


def load_settings(**overrides: object) -> LoomSettings:
    """Read settings, turning validation errors into one `SettingsInvalid` naming each variable."""
    try:
        return LoomSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"LOOM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise errors.SettingsInvalid(f"invalid settings: {problems}") from None


def secret_from_environment(name: str, secrets_dir: Path | None) -> str | None:
    """A secret named NAME comes from `LOOM_SECRET_NAME`, else from `<secrets_dir>/NAME`."""
    value = os.environ.get(f"LOOM_SECRET_{name}")
    if value is not None:
        return value
    if secrets_dir is not None:
        path = secrets_dir / name
        if path.is_file():
            return path.read_text().rstrip("\r\n")  # a file saved with CRLF too
    return None
