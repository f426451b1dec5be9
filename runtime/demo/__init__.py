"""`make run`: the embedded default end to end (activities, then durable actors).

The demo keeps its state in `<LOOM_HOME>/demo` (default `.loom/demo`), recreated on every
run, because it publishes activity variants whose HTTP allowlist names this run's
loopback port.
"""

from __future__ import annotations

import shutil

from runtime.settings import LoomSettings, load_settings


def demo_settings() -> LoomSettings:
    return load_settings(home=load_settings().home / "demo")


def reset() -> LoomSettings:
    settings = demo_settings()
    shutil.rmtree(settings.home, ignore_errors=True)
    return settings
