"""Env grants can never reach Loom's own variables or secrets, and tenants never share
instances, whichever entry point (execute, invoke_sync, invoke) carries the tenant."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import guests
import pytest
from guests import manifest

from runtime import errors
from runtime.executor import Executor, parse_manifest, sha256_hex
from runtime.settings import load_settings

KEY = "env-1"


def _executor(home: Path, env: dict[str, str] | None = None) -> Executor:
    return Executor(load_settings(home=home, pool_size=4), secrets={}, env=env)


@pytest.mark.parametrize("name", ["LOOM_COSMOS_KEY", "LOOM_SECRET_API_TOKEN", "loom_secret_x",
                                  "LOOM_HOME"])
def test_reserved_variables_are_refused_at_upload(tmp_path: Path, name: str) -> None:
    with _executor(tmp_path / "h", env={name: "leak"}) as ex:
        with pytest.raises(errors.ManifestInvalid) as info:
            ex.upload(guests.host_proxy(), manifest("snoop", capabilities={
                "env": ["REGION", name]}))
        assert "capabilities.env.1" in info.value.message and name in info.value.message
        assert info.value.details[0]["loc"] == ["capabilities", "env", 1]
        assert ex.registry.blob.list("manifests/") == []


def test_host_variables_need_the_allowlist(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGION_X", "eu-west")
    monkeypatch.setenv("OTHER_X", "nope")
    monkeypatch.setenv("LOOM_COSMOS_KEY", "super-secret")
    monkeypatch.delenv("LOOM_GUEST_ENV_ALLOW", raising=False)
    request = {"op": "env", "name": "REGION_X"}
    with _executor(tmp_path / "a") as ex:  # no allowlist: nothing can be granted
        ex.upload(guests.host_proxy(), manifest("proxy", capabilities={"env": ["REGION_X"]}))
        with pytest.raises(errors.CapabilityDenied) as info:
            ex.execute("proxy", request, idempotency_key=KEY)
        assert "REGION_X" in info.value.message and "LOOM_GUEST_ENV_ALLOW" in info.value.message
        assert (info.value.activity, info.value.idempotency_key) == ("proxy", KEY)
        assert ex.pool.stats.created == 0, "refused before the guest runs"

    monkeypatch.setenv("LOOM_GUEST_ENV_ALLOW", "REGION_X, LOOM_COSMOS_KEY")
    with _executor(tmp_path / "b") as ex:
        ex.upload(guests.host_proxy(), manifest("proxy", capabilities={"env": ["REGION_X"]}))
        assert ex.execute("proxy", request).output == {"ok": True, "value": "eu-west"}
        with pytest.raises(errors.CapabilityDenied):  # allowed, but not granted
            ex.execute("proxy", {"op": "env", "name": "OTHER_X"})
        # a manifest stored without upload's check (an older version, another tool) that
        # grants a LOOM_* name is still refused, even though the allowlist names it
        wasm = guests.host_proxy()
        ex.registry.store(wasm, parse_manifest(manifest(
            "forged", capabilities={"env": ["LOOM_COSMOS_KEY"]}, sha256=sha256_hex(wasm))))
        with pytest.raises(errors.CapabilityDenied) as info:
            ex.execute("forged", {"op": "env", "name": "LOOM_COSMOS_KEY"})
        assert "LOOM_COSMOS_KEY" in info.value.message
        assert "super-secret" not in str(info.value)


def test_explicit_env_never_exposes_reserved_names(tmp_path: Path) -> None:
    with _executor(tmp_path / "h", env={"REGION": "eu", "LOOM_SECRET_T": "s"}) as ex:
        wasm = guests.host_proxy()
        ex.registry.store(wasm, parse_manifest(manifest(
            "p", capabilities={"env": ["LOOM_SECRET_T"]}, sha256=sha256_hex(wasm))))
        with pytest.raises(errors.CapabilityDenied):
            ex.execute("p", {"op": "env", "name": "LOOM_SECRET_T"})


def test_wasi_environment_holds_only_granted_allowed_names(tmp_path: Path) -> None:
    """A WASI command's environment (environ_get) is exactly the granted variables."""
    with _executor(tmp_path / "h", env={"REGION": "eu-west", "ZONE": "b"}) as ex:
        ex.upload(guests.wasi_environ(), manifest("envdump", abi="wasi-command",
                                                  output_schema={"type": "string"},
                                                  capabilities={"env": ["REGION"]}))
        assert ex.execute("envdump", {}).output == "REGION=eu-west;"


# -- tenants ----------------------------------------------------------------------------------

def test_tenant_flows_through_every_entry_point(tmp_path: Path) -> None:
    with guests.executor_at(tmp_path / "h") as ex:
        ex.upload(guests.counter(), manifest("count", reuse_instances=True))

        async def via_invoke(tenant: str) -> int:
            return int((await ex.invoke("count", {}, tenant=tenant))["count"])

        assert ex.invoke_sync("count", {}, tenant="acme") == {"count": 1}
        assert asyncio.run(via_invoke("acme")) == 2
        assert ex.execute("count", {}, tenant="acme").output == {"count": 3}
        assert asyncio.run(via_invoke("globex")) == 1
        assert ex.invoke_sync("count", {}, tenant="globex") == {"count": 2}
        assert ex.invoke_sync("count", {}) == {"count": 1}  # the default tenant ""
        sha = ex.registry.get("count").sha256
        assert {k[3] for k in ex.pool._idle} == {"acme", "globex", ""}
        assert all(k[:3] == ("count", "1.0.0", sha) for k in ex.pool._idle)


def test_concurrent_tenants_never_see_each_others_instance(tmp_path: Path) -> None:
    """One thread per tenant, interleaved: each tenant's warm instance counts only its own
    calls (a shared instance would skip numbers)."""
    calls, tenants = 150, [f"ns{i}" for i in range(6)]
    with guests.executor_at(tmp_path / "h", pool_size=1) as ex:
        ex.upload(guests.counter(), manifest("count", reuse_instances=True))
        seen: dict[str, list[int]] = {}

        def run(tenant: str) -> None:
            seen[tenant] = [ex.invoke_sync("count", {}, tenant=tenant)["count"]
                            for _ in range(calls)]

        threads = [threading.Thread(target=run, args=(t,)) for t in tenants]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ex.pool.stats.created == len(tenants)
    assert seen == {t: list(range(1, calls + 1)) for t in tenants}
