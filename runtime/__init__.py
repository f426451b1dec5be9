"""Loom: WebAssembly activities in a Wasmtime sandbox.

    from runtime import Executor, errors
    with Executor() as ex:
        ex.invoke_sync("echo", {"hello": "world"})
"""

from runtime import errors
from runtime.executor import Executor, InvocationResult, UploadResult
from runtime.settings import LoomSettings, load_settings

__all__ = ["Executor", "InvocationResult", "LoomSettings", "UploadResult", "errors",
           "load_settings"]
