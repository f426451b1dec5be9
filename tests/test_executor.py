"""The executor's happy paths: upload, versions, invoke, instance reuse, host calls,
concurrency and fuel accounting."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import guests
import pytest
from guests import check_error, manifest
from pydantic import BaseModel

from runtime import errors
from runtime.executor import Executor, InvocationResult, sha256_hex
from runtime.settings import load_settings


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
    with guests.executor_at(tmp_path / "home", pool_size=8,
                            secrets={"API_TOKEN": "t0ps3cret"},
                            env={"REGION": "eu-west", "UNRELATED": "nope"}) as ex:
        yield ex


# -- upload and invoke -------------------------------------------------------------------------

def test_upload_then_invoke_dict(executor: Executor) -> None:
    up = executor.upload(guests.echo(), manifest("echo"))
    assert up.created is True
    payload = {"name": "Ada", "tags": ["x", "y"], "nested": {"n": 1.5, "ok": True, "none": None},
               "unicode": "żółw 🐢"}
    result = executor.execute("echo", payload, idempotency_key="k-1")
    assert isinstance(result, InvocationResult)
    assert result.output == payload
    assert (result.activity, result.version, result.idempotency_key) == ("echo", "1.0.0", "k-1")
    assert result.duration_ms > 0
    assert result.memory_bytes >= 2 * 65536
    assert result.fuel_used is None
    assert executor.invoke_sync("echo", payload) == payload


def test_adhoc_idempotency_keys_are_unique(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo"))
    keys = {executor.execute("echo", {}).idempotency_key for _ in range(5)}
    assert len(keys) == 5
    assert all(k.startswith("adhoc:") for k in keys)


class Order(BaseModel):
    sku: str
    qty: int
    notes: list[str] = []


class Summary(BaseModel):
    count: int


def test_pydantic_model_in_and_output_model_out(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo"))
    order = Order(sku="A-1", qty=3, notes=["gift"])
    out = executor.invoke_sync("echo", order, output_model=Order)
    assert isinstance(out, Order)
    assert out == order


def test_output_model_mismatch_is_output_invalid(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo"))
    with pytest.raises(errors.LoomError) as info:
        executor.invoke_sync("echo", {"count": "many"}, output_model=Summary,
                             idempotency_key="k-2")
    check_error(info.value, errors.OutputInvalid, code="output_invalid", activity="echo",
                key="k-2", mentions=("Summary", "count"))


def test_upload_accepts_manifest_json_text(executor: Executor) -> None:
    wasm = guests.echo()
    text = guests.dumps({**manifest("echo"), "sha256": sha256_hex(wasm)})
    assert executor.upload(wasm, text).created
    assert executor.upload(wasm, text.encode()).created is False


# -- versions ----------------------------------------------------------------------------------

def version_guest(version: str) -> bytes:
    return guests.constant(guests.dumps({"v": version}))


def test_versions_side_by_side_and_latest_in_semver_order(executor: Executor) -> None:
    uploaded = ["1.9.0", "1.10.0-rc.1", "1.2.0", "1.10.0", "1.10.0-alpha", "0.9.9"]
    for v in uploaded:
        executor.upload(version_guest(v), manifest("svc", v))
    assert executor.registry.versions("svc") == [
        "0.9.9", "1.2.0", "1.9.0", "1.10.0-alpha", "1.10.0-rc.1", "1.10.0"]
    latest = executor.execute("svc", {})
    assert latest.version == "1.10.0"
    assert latest.output == {"v": "1.10.0"}
    for v in uploaded:
        pinned = executor.execute("svc", {}, version=v)
        assert (pinned.version, pinned.output) == (v, {"v": v})


def test_latest_follows_a_new_upload(executor: Executor) -> None:
    executor.upload(version_guest("1.0.0"), manifest("svc", "1.0.0"))
    assert executor.invoke_sync("svc", {}) == {"v": "1.0.0"}
    executor.upload(version_guest("1.1.0"), manifest("svc", "1.1.0"))
    assert executor.invoke_sync("svc", {}) == {"v": "1.1.0"}
    assert executor.invoke_sync("svc", {}, version="1.0.0") == {"v": "1.0.0"}


def test_prerelease_ordering_within_a_prerelease() -> None:
    from schemas.manifest import semver_key

    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]
    assert sorted(reversed(ordered), key=semver_key) == ordered


def test_reupload_identical_is_a_noop(executor: Executor) -> None:
    wasm = guests.echo()
    first = executor.upload(wasm, manifest("echo"))
    blobs = executor.registry.blob.list("")
    again = executor.upload(wasm, manifest("echo"))
    assert (first.created, again.created) == (True, False)
    assert again.manifest == first.manifest
    assert executor.registry.blob.list("") == blobs
    assert executor.registry.versions("echo") == ["1.0.0"]


@pytest.mark.parametrize("change", ["bytes", "manifest"])
def test_same_version_different_content_conflicts(executor: Executor, change: str) -> None:
    original = executor.upload(guests.echo(), manifest("echo")).manifest
    wasm = guests.constant('{"other":1}') if change == "bytes" else guests.echo()
    fields = {"description": "changed"} if change == "manifest" else {}
    with pytest.raises(errors.LoomError) as info:
        executor.upload(wasm, manifest("echo", **fields))
    check_error(info.value, errors.VersionConflict, code="version_conflict", activity="echo",
                mentions=("echo@1.0.0", "wasm bytes" if change == "bytes" else "manifest"))
    assert executor.registry.get("echo", "1.0.0") == original
    assert executor.registry.versions("echo") == ["1.0.0"]
    assert executor.invoke_sync("echo", {"still": "echo"}) == {"still": "echo"}


def test_not_found(executor: Executor) -> None:
    with pytest.raises(errors.LoomError) as info:
        executor.execute("nope", {})
    check_error(info.value, errors.NotFound, code="not_found", activity="nope", version=None,
                mentions=("nope",))
    executor.upload(guests.echo(), manifest("echo"))
    with pytest.raises(errors.LoomError) as info:
        executor.execute("echo", {}, version="9.9.9")
    check_error(info.value, errors.NotFound, code="not_found", activity="echo",
                version="9.9.9", mentions=("echo@9.9.9",))


def test_manifest_without_sha256_gets_it_filled(executor: Executor) -> None:
    wasm = guests.echo()
    up = executor.upload(wasm, manifest("echo"))
    assert up.manifest.sha256 == sha256_hex(wasm)
    assert executor.registry.get("echo", "1.0.0").sha256 == sha256_hex(wasm)
    assert executor.registry.fetch_wasm(up.manifest) == wasm


def test_manifest_with_wrong_sha256_is_refused(executor: Executor) -> None:
    wasm = guests.echo()
    wrong = sha256_hex(b"something else")
    with pytest.raises(errors.LoomError) as info:
        executor.upload(wasm, {**manifest("echo"), "sha256": wrong})
    check_error(info.value, errors.IntegrityError, code="integrity", activity="echo",
                mentions=(wrong, sha256_hex(wasm)))
    assert executor.registry.versions("echo") == []
    assert executor.registry.blob.list("") == []


def test_invalid_manifest_at_upload(executor: Executor) -> None:
    with pytest.raises(errors.ManifestInvalid, match=r"limits\.timeout_ms"):
        executor.upload(guests.echo(), manifest("echo", limits={"timeout_ms": 0}))
    assert executor.registry.blob.list("") == []


# -- instance reuse and tenants ----------------------------------------------------------------

def test_reuse_instances_keeps_guest_state(executor: Executor) -> None:
    executor.upload(guests.counter(), manifest("count", reuse_instances=True))
    results = [executor.execute("count", {}) for _ in range(3)]
    assert [r.output for r in results] == [{"count": 1}, {"count": 2}, {"count": 3}]
    assert [r.reused_instance for r in results] == [False, True, True]
    assert executor.pool.stats.created == 1


def test_without_reuse_every_call_gets_a_fresh_instance(executor: Executor) -> None:
    executor.upload(guests.counter(), manifest("count", reuse_instances=False))
    results = [executor.execute("count", {}) for _ in range(3)]
    assert [r.output for r in results] == [{"count": 1}] * 3
    assert not any(r.reused_instance for r in results)
    assert executor.pool.idle_count() == 0
    assert executor.pool.stats.created == 3
    assert executor.pool.stats.retired == 3


def test_tenants_never_share_instances(executor: Executor) -> None:
    executor.upload(guests.counter(), manifest("count", reuse_instances=True))

    def count(tenant: str) -> int:
        return int(executor.execute("count", {}, tenant=tenant).output["count"])

    assert [count("acme"), count("acme")] == [1, 2]
    assert count("globex") == 1
    assert count("acme") == 3
    assert count("") == 1
    assert count("globex") == 2


def test_versions_never_share_instances(executor: Executor) -> None:
    for v in ("1.0.0", "1.0.1"):
        executor.upload(guests.counter(), manifest("count", v, reuse_instances=True))
    assert executor.invoke_sync("count", {}, version="1.0.0") == {"count": 1}
    assert executor.invoke_sync("count", {}, version="1.0.1") == {"count": 1}
    assert executor.invoke_sync("count", {}, version="1.0.0") == {"count": 2}


def test_pool_size_zero_disables_reuse(tmp_path: Path) -> None:
    with guests.executor_at(tmp_path / "h", pool_size=0) as ex:
        ex.upload(guests.counter(), manifest("count", reuse_instances=True))
        assert [ex.invoke_sync("count", {}) for _ in range(2)] == [{"count": 1}] * 2


def test_reused_instance_handles_growing_inputs(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo", reuse_instances=True))
    for size in (10, 200_000, 5, 300_000, 0):
        payload = {"s": "x" * size}
        assert executor.invoke_sync("echo", payload) == payload
    assert executor.pool.stats.created == 1


def test_output_in_memory_grown_by_the_call_is_read(executor: Executor) -> None:
    """loom_run grows memory and answers from the new pages: the host maps them anew."""
    executor.upload(guests.core("""
    (local.set $n (i32.shl (memory.grow (i32.const 3)) (i32.const 16)))
    (memory.copy (local.get $n) (local.get $ptr) (local.get $len))
    (call $pack (local.get $n) (local.get $len))"""), manifest("grower", reuse_instances=True))
    sizes = []
    for i in range(4):
        payload = {"i": i, "s": "y" * (i * 1000)}
        result = executor.execute("grower", payload)
        assert result.output == payload
        sizes.append(result.memory_bytes)
    assert sizes == [sizes[0] + i * 3 * 65536 for i in range(4)]
    assert executor.pool.stats.created == 1


def test_core_guest_exit_is_a_guest_error_and_retires_the_instance(executor: Executor) -> None:
    executor.upload(guests.core(
        "(call $proc_exit (i32.const 7)) (call $pack (local.get $ptr) (local.get $len))",
        imports='(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'),
        manifest("exits", reuse_instances=True))
    for _ in range(2):
        with pytest.raises(errors.GuestError) as info:
            executor.execute("exits", {})
        check_error(info.value, errors.GuestError, code="guest_error", activity="exits",
                    mentions=("exited with code 7",))
        assert info.value.details == {"exit_code": 7, "stderr_tail": ""}
    assert (executor.pool.stats.created, executor.pool.stats.retired) == (2, 2)


# -- host calls --------------------------------------------------------------------------------

def proxy(executor: Executor, request: dict[str, Any], key: str | None = None,
          **caps: Any) -> InvocationResult:
    executor.upload(guests.host_proxy(), manifest("proxy", capabilities=caps or None))
    return executor.execute("proxy", request, idempotency_key=key)


def test_secret_op_granted(executor: Executor) -> None:
    out = proxy(executor, {"op": "secret", "name": "API_TOKEN"}, secrets=["API_TOKEN"]).output
    assert out == {"ok": True, "value": "t0ps3cret"}


def test_secret_granted_but_absent_is_null(executor: Executor) -> None:
    out = proxy(executor, {"op": "secret", "name": "MISSING"}, secrets=["MISSING"]).output
    assert out == {"ok": True, "value": None}


def test_secret_provider_callable(tmp_path: Path) -> None:
    asked: list[str] = []

    def provider(name: str) -> str | None:
        asked.append(name)
        return f"value-of-{name}"

    with Executor(load_settings(home=tmp_path / "h"), secrets=provider, env={}) as ex:
        out = proxy(ex, {"op": "secret", "name": "DB_PASSWORD"}, secrets=["DB_PASSWORD"]).output
    assert out == {"ok": True, "value": "value-of-DB_PASSWORD"}
    assert asked == ["DB_PASSWORD"]


def test_env_op_granted(executor: Executor) -> None:
    out = proxy(executor, {"op": "env", "name": "REGION"}, env=["REGION"]).output
    assert out == {"ok": True, "value": "eu-west"}


def test_log_op_lands_in_result_and_python_logging(executor: Executor,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="loom.activity")
    request = {"op": "log", "level": "warning", "message": "disk almost full",
               "fields": {"free_mb": 12}}
    result = proxy(executor, request, key="k-log", log=True)
    assert result.output == {"ok": True}
    assert result.logs == [{"level": "warning", "message": "disk almost full",
                            "fields": {"free_mb": 12}}]
    assert result.logs_dropped == 0
    records = [r for r in caplog.records if r.name == "loom.activity.proxy"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "disk almost full"
    assert record.__dict__["idempotency_key"] == "k-log"
    assert record.__dict__["fields"] == {"free_mb": 12}


def test_logs_beyond_max_log_bytes_are_dropped(executor: Executor) -> None:
    executor.upload(guests.host_proxy(), manifest(
        "proxy", capabilities={"log": True}, limits={"max_log_bytes": 10}))
    result = executor.execute("proxy", {"op": "log", "message": "x" * 50})
    assert result.logs == []
    assert result.logs_dropped == 1


def test_idempotency_key_op(executor: Executor) -> None:
    executor.upload(guests.host_proxy(), manifest("proxy", reuse_instances=True))
    first = executor.execute("proxy", {"op": "idempotency_key"}, idempotency_key="pay-1")
    second = executor.execute("proxy", {"op": "idempotency_key"}, idempotency_key="pay-2")
    assert first.output == {"ok": True, "value": "pay-1"}
    assert second.reused_instance
    assert second.output == {"ok": True, "value": "pay-2"}


def test_unknown_op_is_reported_to_the_guest(executor: Executor) -> None:
    out = proxy(executor, {"op": "launch_missiles"}).output
    assert out["ok"] is False
    assert out["error"]["code"] == "unknown_op"


# -- concurrency -------------------------------------------------------------------------------

def test_threads_each_get_their_own_output(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo", reuse_instances=True))
    wrong: list[tuple[Any, Any]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                payload = {"thread": t, "i": i, "pad": "p" * ((t * 50 + i) % 97)}
                out = executor.invoke_sync("echo", payload, idempotency_key=f"{t}-{i}")
                if out != payload:
                    wrong.append((payload, out))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not failures
    assert wrong == []
    stats = executor.pool.stats
    assert stats.created + stats.reused == 400
    assert stats.created <= 8, "at most one instance per concurrent caller"
    assert stats.retired == 0


def test_async_gather_100(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo", reuse_instances=True))

    async def main() -> list[Any]:
        return await asyncio.gather(*(executor.invoke("echo", {"n": n, "s": str(n) * (n % 7)})
                                      for n in range(100)))

    outs = asyncio.run(main())
    assert outs == [{"n": n, "s": str(n) * (n % 7)} for n in range(100)]


def test_async_invoke_with_output_model_and_errors(executor: Executor) -> None:
    executor.upload(guests.echo(), manifest("echo"))

    async def main() -> tuple[Order, BaseException | None]:
        order = await executor.invoke("echo", Order(sku="B", qty=1), output_model=Order)
        try:
            await executor.invoke("missing", {})
        except errors.NotFound as exc:
            return order, exc
        return order, None

    order, exc = asyncio.run(main())
    assert order == Order(sku="B", qty=1)
    assert isinstance(exc, errors.NotFound)


# -- fuel --------------------------------------------------------------------------------------

def test_fuel_used_is_reported(executor: Executor) -> None:
    executor.upload(guests.counter(), manifest("count", limits={"fuel": 10_000_000}))
    result = executor.execute("count", {})
    assert result.output == {"count": 1}
    assert result.fuel_used is not None
    assert 0 < result.fuel_used < 10_000_000


def test_fuel_is_refilled_for_each_call(executor: Executor) -> None:
    executor.upload(guests.counter(), manifest("count", reuse_instances=True,
                                               limits={"fuel": 10_000_000}))
    used = [executor.execute("count", {}).fuel_used for _ in range(3)]
    assert all(u is not None and 0 < u < 10_000 for u in used)


# -- a process must be able to hold more than one executor --------------------------------------

def test_bug_two_executors_in_one_process(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import guests
        for i in range(2):
            with guests.executor_at(Path({str(tmp_path)!r}) / f"home{{i}}") as ex:
                ex.upload(guests.echo(), guests.manifest("echo"))
                assert ex.execute("echo", {{"i": i}}).output == {{"i": i}}
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[1],
                          env={**os.environ, "RUST_BACKTRACE": "0"})
    assert proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr[-1000:]}"
    assert "survived" in proc.stdout
