"""component-v1 end to end: a Python sample built by `activities/build.py` (componentize-py,
schemas from its type hints), uploaded, invoked, pooled, cached on disk; and what upload
refuses (a memory limit below the component's minimum, imports outside the world, a core
module under component-v1)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from component_builds import HOME, built, built_sample, executor_at, upload

from runtime import errors
from runtime.executor import Executor

INVOICE = {"lines": [{"sku": "tea", "qty": 3, "unit_cents": 450},
                     {"sku": "cake", "qty": 1, "unit_cents": 1200}], "discount_pct": 10}


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    with executor_at(tmp_path_factory.mktemp("components")) as executor:
        wasm, manifest = built_sample("py/invoice_total.py")
        executor.upload(wasm, manifest)
        upload(executor, "conf_py")
        yield executor


def test_a_python_activity_runs_with_schemas_from_its_type_hints(ex: Executor) -> None:
    m = ex.registry.get("invoice_total")
    assert m.abi.value == "component-v1"
    assert m.input_schema["properties"]["lines"]["items"] == {"$ref": "#/$defs/Line"}
    assert m.output_schema["required"] == ["total_cents", "lines"]
    result = ex.execute("invoice_total", INVOICE)
    assert result.output == {"total_cents": 2295, "lines": 2}


def test_input_not_matching_the_type_hints_never_reaches_the_guest(ex: Executor) -> None:
    created = ex.pool.stats.created
    bad = {"lines": [{"sku": "tea", "qty": "three", "unit_cents": 450}], "discount_pct": 0}
    with pytest.raises(errors.InputInvalid) as caught:
        ex.execute("invoice_total", bad)
    assert "lines.0.qty" in caught.value.message
    assert ex.pool.stats.created == created


def test_warm_instances_are_reused_per_tenant_and_never_shared(ex: Executor) -> None:
    counts = [ex.execute("conf_py", {"op": "counter"}, tenant="acme").output["count"]
              for _ in range(3)]
    assert counts == [1, 2, 3]
    other = ex.execute("conf_py", {"op": "counter"}, tenant="globex")
    assert other.output == {"count": 1} and not other.reused_instance
    again = ex.execute("conf_py", {"op": "counter"}, tenant="acme")
    assert again.output == {"count": 4} and again.reused_instance


def test_without_reuse_every_call_gets_a_fresh_instance(ex: Executor) -> None:
    upload(ex, "conf_py", version="1.3.0", reuse_instances=False)
    for _ in range(2):
        result = ex.execute("conf_py", {"op": "counter"}, version="1.3.0")
        assert result.output == {"count": 1} and not result.reused_instance


def test_a_new_executor_loads_the_component_from_the_disk_cache(tmp_path: Path) -> None:
    wasm, manifest = built("conf_py")
    with executor_at(tmp_path / "blobs") as first:
        first.upload(wasm, manifest)  # compiled once ever: the cache is shared
    with executor_at(tmp_path / "blobs") as fresh:
        assert fresh.execute("conf_py", {"op": "echo", "x": 1}).output == {"op": "echo", "x": 1}
        stats = fresh.modules.stats
        assert (stats.compiles, stats.disk_hits, stats.rejected) == (0, 1, 0)


def test_a_tampered_cache_file_is_refused(tmp_path: Path) -> None:
    wasm, manifest = built("conf_py")
    home = tmp_path / "home"
    with executor_at(tmp_path / "blobs") as warm:
        warm.upload(wasm, manifest)
        m = warm.registry.get("conf_py")
        config = warm._engine_config(m)
        path = warm.modules.path_for(config.fingerprint, m.sha256, "component")
    assert path is not None and path.exists()
    # a private copy of the shared cache: one flipped byte deep inside the native code
    (home / "cache").mkdir(parents=True)
    shutil.copy(HOME / "cache.key", home / "cache.key")
    copy = home / "cache" / path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with executor_at(tmp_path / "blobs", home=home) as ex:
        engine = ex.engines.get(config)
        assert ex.modules._from_disk(engine, config.fingerprint, m.sha256, "component") is None
        assert ex.modules.stats.rejected == 1
        assert not copy.exists(), "a refused file is deleted"


def test_upload_refuses_a_memory_limit_below_the_component_minimum(ex: Executor) -> None:
    with pytest.raises(errors.ManifestInvalid) as caught:
        upload(ex, "conf_py", version="1.4.0", limits={"memory_bytes": 8 * 1024 * 1024})
    err = caught.value
    assert "limits.memory_bytes=8,388,608 is too small" in err.message
    assert "pages" in err.message
    assert err.details[0]["loc"] == ["limits", "memory_bytes"]
    assert "1.4.0" not in ex.registry.versions("conf_py")


def test_upload_refuses_imports_outside_the_world(ex: Executor) -> None:
    wasm = bytes(wasmtime.wat2wasm("""(component
      (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
      (import "evil:x/y@1.0.0" (instance))
    )"""))
    with pytest.raises(errors.CapabilityDenied) as caught:
        ex.upload(wasm, {"name": "outside", "version": "1.0.0", "abi": "component-v1"})
    assert "wasi:http/outgoing-handler@0.2.0" in caught.value.message
    assert "evil:x/y@1.0.0" in caught.value.message
    assert ex.registry.versions("outside") == []


def test_upload_refuses_a_core_module_as_a_component(ex: Executor) -> None:
    wasm, _ = built("conf_core")
    with pytest.raises(errors.ModuleInvalid) as caught:
        ex.upload(wasm, {"name": "notcomp", "version": "1.0.0", "abi": "component-v1"})
    assert "component" in caught.value.message


def test_fuel_limits_a_python_component(ex: Executor) -> None:
    # a fuel-metered engine compiles its own code (cached on disk like any other)
    upload(ex, "conf_py", version="1.5.0", limits={"fuel": 50_000_000})
    ok = ex.execute("conf_py", {"op": "echo"}, version="1.5.0")
    assert ok.fuel_used is not None and 0 < ok.fuel_used < 50_000_000
    with pytest.raises(errors.OutOfFuel):
        ex.execute("conf_py", {"op": "loop"}, version="1.5.0")
    assert ex.execute("conf_py", {"op": "echo"}, version="1.5.0").output == {"op": "echo"}
