"""Actor modules used by the actor tests (the lint runs on the module of every actor class)."""
