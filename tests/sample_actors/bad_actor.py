"""An actor module that is NOT replay-safe: the lint must refuse to register its actors."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from runtime.actors import Actor, ActorContext, handler


class Sloppy(Actor, type_name="sloppy"):
    @handler
    async def stamp(self, ctx: ActorContext, payload: Any) -> dict[str, Any]:
        self.state["at"] = time.time()
        self.state["roll"] = random.randint(1, 6)
        self.state["region"] = os.environ.get("REGION")
        return self.state
