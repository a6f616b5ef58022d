"""State store URLs: what the client connects with, and what the policy refuses at load (with its line)."""

from __future__ import annotations

import pytest

from netpolicy.model import PolicyError, parse_policy
from netpolicy.model.store_url import SentinelUrl, check_store_url
from tests.unit.test_policy_values import EXAMPLE, line_of


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://10.0.0.1/mymaster",
     SentinelUrl(((("10.0.0.1", 26379),)), "mymaster", "0", None, None, None)),
    ("redis+sentinel://:s3cret@10.0.0.1:26380,10.0.0.2,[2001:db8::3]:26381/mymaster/2?sentinel_password=x%20y",
     SentinelUrl((("10.0.0.1", 26380), ("10.0.0.2", 26379), ("2001:db8::3", 26381)), "mymaster", "2", None, "s3cret", "x y")),
    ("redis+sentinel://np:pa%40ss@[2001:db8::1]/m",
     SentinelUrl((("2001:db8::1", 26379),), "m", "0", "np", "pa@ss", None)),
])
def test_sentinel_urls_are_taken_apart(url: str, expected: SentinelUrl) -> None:
    assert SentinelUrl.parse(url) == expected


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://10.0.0.1:26379", "service name is missing"),
    ("redis+sentinel://10.0.0.1:26379/", "service name is missing"),
    ("redis+sentinel://10.0.0.1:26379/m/zero", "database must be a number"),
    ("redis+sentinel://10.0.0.1:99999/m", "not a sentinel address"),
    ("redis+sentinel://10.0.0.1:x/m", "not a sentinel address"),
    ("redis+sentinel://10.0.0.1,,10.0.0.2/m", "not a sentinel address"),
    ("redis://10.0.0.1:99999/0", "Port out of range"),
    ("redis://10.0.0.1:port/0", "Port could not be cast"),
    ("redis:///0", "host is missing"),
    ("redis://10.0.0.1/one", "database must be a number"),
    ("unix://", "path is missing"),
    ("unix:///run/redis.sock?db=x", "database must be a number"),
])
def test_urls_the_client_cannot_use_are_refused(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_store_url(url)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://store.example.test/1?ssl_ca_certs=/etc/ca.pem",
                                 "unix:///run/redis/redis.sock?db=3", "redis+sentinel://10.0.0.1,10.0.0.2/mymaster/0"])
def test_usable_urls_pass(url: str) -> None:
    assert check_store_url(url) == url


def test_a_policy_with_a_bad_store_url_is_refused_at_its_line() -> None:
    text = EXAMPLE + "state:\n  redis: redis+sentinel://10.0.0.1:26379\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yml")
    (problem,) = info.value.problems
    assert str(problem).startswith(f"p.yml:{line_of(text, 'redis: redis+sentinel')}:"), problem
    assert "service name is missing" in str(problem)
