"""The LOOM_LIMITS setting: what parses, and errors that name the bad field."""

from __future__ import annotations

import pytest

from runtime import errors
from runtime.limits import MemoryLimiter, limiter_from_settings, parse_limits

EXAMPLE = """{"http_post": {"concurrency": 4, "rate_per_s": 50, "burst": 10,
              "tenants": {"acme": {"concurrency": 2}, "*": {"rate_per_s": 5}}}}"""


def test_the_example_parses_and_resolves_tenants() -> None:
    config = parse_limits(EXAMPLE)
    limits = config.get("http_post")
    assert limits is not None and limits.concurrency == 4 and limits.effective_burst == 10
    assert limits.lease_s == 60
    scopes = config.scopes("http_post", "acme")
    assert scopes is not None
    assert [s.key for s in scopes] == ["{http_post}", "{http_post}:t:acme"]
    assert scopes[1].limit is not None and scopes[1].limit.concurrency == 2
    other = config.scopes("http_post", "globex")
    assert other is not None and other[1].limit is not None and other[1].limit.rate_per_s == 5
    assert config.scopes("resize", "acme") is None


def test_empty_means_no_limits() -> None:
    assert parse_limits("").root == {} and parse_limits("  ").root == {}


def test_tenant_only_limits() -> None:
    scopes = parse_limits('{"a": {"tenants": {"*": {"concurrency": 1}}}}').scopes("a", "t")
    assert scopes is not None and scopes[0].limit is None and scopes[1].limit is not None


@pytest.mark.parametrize(("text", "message"), [
    ('{"http_post": {"concurrency": 0}}',
     "LOOM_LIMITS: http_post.concurrency: Input should be greater than 0 (got 0)"),
    ('{"http_post": {"concurrency": "4"}}',
     "http_post.concurrency: Input should be a valid integer (got '4')"),
    ('{"http_post": {"concurrency": 2.5}}', "http_post.concurrency: Input should be a valid"),
    ('{"http_post": {"concurrency": true}}', "http_post.concurrency: Input should be a valid"),
    ('{"http_post": {"rate_per_s": -1}}', "http_post.rate_per_s: Input should be greater"),
    ('{"http_post": {"concurency": 4}}',
     "http_post.concurency: Extra inputs are not permitted"),
    ('{"http_post": {"burst": 5}}', "http_post: Value error, burst needs rate_per_s"),
    ('{"http_post": {}}', "http_post: Value error, set concurrency, rate_per_s or tenants"),
    ('{"http_post": {"tenants": {"acme": {}}}}',
     "http_post.tenants.acme: Value error, set concurrency, rate_per_s or both"),
    ('{"http_post": {"tenants": {"acme": {"concurrency": -2}}}}',
     "http_post.tenants.acme.concurrency: Input should be greater than 0"),
    ('{"http_post": {"tenants": {"acme": {"lease_s": 5}}}}',
     "http_post.tenants.acme.lease_s: Extra inputs are not permitted"),
    ('{"http_{post}": {"concurrency": 1}}',
     "http_{post}.[key]: Value error, an activity name must be 1-200 characters without"),
    ('{"": {"concurrency": 1}}', ".[key]: Value error, an activity name must be"),
    ('{"http_post": {"concurrency": 1, "lease_s": 0}}', "http_post.lease_s: Input should be"),
    ('[]', "LOOM_LIMITS: (top level): Input should be an object"),
    ('{"http_post": ', "LOOM_LIMITS: (top level): Invalid JSON"),
])
def test_bad_configs_name_the_field(text: str, message: str) -> None:
    with pytest.raises(errors.SettingsInvalid) as info:
        parse_limits(text)
    assert message in str(info.value)


def test_limiter_from_settings() -> None:
    assert isinstance(limiter_from_settings(EXAMPLE), MemoryLimiter)
    with pytest.raises(errors.SettingsInvalid, match="memory:// or redis://"):
        limiter_from_settings(EXAMPLE, "postgres://x")
