"""`loom serve` settings (`LOOM_SERVICE_*`), beside the runtime's `LOOM_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOM_SERVICE_", extra="ignore", frozen=True)

    db: Path | None = Field(default=None, description="Keys and schedules (default "
                            "<LOOM_HOME>/service.db).")
    store: str = Field(default="sqlite", pattern="^(sqlite|redis)$", description="Where keys "
                       "and schedules live: sqlite (LOOM_SERVICE_DB, shared by the servers of "
                       "one machine) or redis (LOOM_REDIS_URL, shared by a fleet on many hosts).")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="JSON request bodies.")
    max_upload_bytes: int = Field(default=64 << 20, ge=1024, description="Activity uploads "
                                  "(wasm + manifest).")
    max_ask_timeout_s: float = Field(default=60.0, gt=0)
    cron_interval_s: float = Field(default=0.5, gt=0, description="How often a server looks "
                                   "for due cron ticks.")
    max_catch_up: int = Field(default=1000, ge=1, description="Missed ticks fired at most, per "
                              "schedule and pass, when a schedule catches up.")
    run_actors: bool = Field(default=True, description="Run actors in the server process "
                             "(workflows, and the types of --module).")
    quotas: str = Field(default="", description='Requests per minute per tenant, JSON: '
                        '{"*": {"per_minute": 600}, "acme": {"per_minute": 6000, "burst": 500}}'
                        ' (a tenant\'s own entry, else "*"); empty: none.')
    studio: bool = True
