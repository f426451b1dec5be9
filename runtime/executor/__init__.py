"""The WASM activity executor: registry, compiled-module cache, instance pool, sandbox."""

from runtime.executor.executor import Executor, InvocationResult
from runtime.executor.registry import ActivityRegistry, UploadResult, parse_manifest, sha256_hex

__all__ = ["ActivityRegistry", "Executor", "InvocationResult", "UploadResult", "parse_manifest",
           "sha256_hex"]
