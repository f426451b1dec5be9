"""`make run`: the embedded default end to end (activities, then durable actors)."""
