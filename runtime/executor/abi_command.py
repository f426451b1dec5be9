"""wasi-command: an unmodified WASI program, JSON on stdin, JSON on stdout; a fresh
instance every call (see activities/README.md)."""

from __future__ import annotations

from runtime.executor.abi import Call, Outcome
from runtime.executor.abi_core import CoreAbi, instance_pre
from runtime.executor.instances import run_command
from schemas.manifest import AbiKind


class CommandAbi(CoreAbi):
    """Compiled and checked like core-v1 (`check_module` knows both); run differently."""

    kind = AbiKind.WASI_COMMAND

    def run(self, call: Call) -> Outcome:
        session = self.s.new_session(call.manifest)
        session.begin(call.idempotency_key, call.deadline)
        out, fuel, memory = run_command(call.engine, instance_pre(self.s, call), call.manifest,
                                        session, call.data, call.ticks)
        return Outcome(call.decode(out), session.logs, session.logs_dropped, fuel, memory,
                       False)
