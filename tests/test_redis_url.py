"""REDIS_URL: plain URLs pass through untouched; redis+sentinel:// URLs are taken apart or rejected with a
message that says what is wrong (and never echoes the URL, which may hold a password)."""

from __future__ import annotations

import os

import pytest
from arq.connections import RedisSettings
from redis.asyncio.sentinel import SentinelConnectionPool

from runinfra_webhooks.service.settings import ConfigError, load_settings
from runinfra_webhooks.service.storage.connection import arq_redis_settings, connect
from runinfra_webhooks.service.storage.redis_url import RedisTarget, RedisUrlError, parse_redis_url
from tests.processes import cli

SECRET = "whsec_test_primary_0123456789"


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "redis://:p%40ss@redis:6380/3",
    "rediss://user:pw@redis.example:6380",
    "unix:///run/redis.sock?db=2",
    "REDIS://localhost",
])
def test_plain_urls_pass_through(url: str) -> None:
    """A redis://, rediss:// or unix:// URL is passed on untouched, not read as Sentinel."""
    target = parse_redis_url(url)
    assert target == RedisTarget(url=url)
    assert not target.is_sentinel
    assert target.sentinels == () and target.master is None


def test_a_sentinel_url_defaults_to_port_26379_and_database_0() -> None:
    """A Sentinel URL without a port or a database means port 26379 and database 0."""
    target = parse_redis_url("redis+sentinel://sentinel-0/mymaster")
    assert target.is_sentinel
    assert target.sentinels == (("sentinel-0", 26379),)
    assert (target.master, target.db, target.username, target.password) == ("mymaster", 0, None, None)


def test_a_sentinel_url_reads_several_sentinels_a_database_and_a_password() -> None:
    """Several Sentinels (IPv6 in brackets), the database and a percent-encoded password are read; repr hides it."""
    target = parse_redis_url("redis+sentinel://:s3cr%40t@10.0.0.1:26379,10.0.0.2:26380,[::1]:5000,s4/m-1/7")
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 5000), ("s4", 26379))
    assert (target.master, target.db, target.username, target.password) == ("m-1", 7, None, "s3cr@t")
    assert "s3cr" not in repr(target)


def test_a_sentinel_url_reads_username_and_password() -> None:
    """The userinfo of a Sentinel URL gives the username and the password."""
    target = parse_redis_url("redis+sentinel://app:pw@h:1/m")
    assert (target.username, target.password) == ("app", "pw")


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+sentinel://h1:26379", "no master name"),
    ("redis+sentinel://h1:26379/", "no master name"),
    ("redis+sentinel:///m", "no Sentinel address"),
    ("redis+sentinel://h1,,h2/m", "empty Sentinel address"),
    ("redis+sentinel://h1:port/m", "port is not a number"),
    ("redis+sentinel://h1:0/m", "port is not a number"),
    ("redis+sentinel://h1:70000/m", "port is not a number"),
    ("redis+sentinel://h1:/m", "empty port"),
    ("redis+sentinel://:26379/m", "has no host"),
    ("redis+sentinel://::1:26379/m", "IPv6"),
    ("redis+sentinel://[::1/m", "unclosed"),
    ("redis+sentinel://h1/m/db1", "database is not a non-negative integer"),
    ("redis+sentinel://h1/m/-1", "database is not a non-negative integer"),
    ("redis+sentinel://h1/m/0/extra", "too many path segments"),
    ("redis+sentinel://h1/m?password=x", "no query string"),
    ("redis+sentinel://justpassword@h1/m", "userinfo without ':'"),
    ("sentinel://h1/m", "unknown scheme"),
    ("http://h1/m", "unknown scheme"),
    ("localhost:6379", "not a URL"),
])
def test_malformed_urls_are_rejected_with_a_reason(url: str, reason: str) -> None:
    """A malformed URL is refused with a one-line reason that says what is wrong."""
    with pytest.raises(RedisUrlError) as exc:
        parse_redis_url(url)
    message = str(exc.value)
    assert reason in message
    assert "\n" not in message


def test_the_error_never_contains_the_password() -> None:
    """The error for a malformed URL never repeats its password."""
    with pytest.raises(RedisUrlError) as exc:
        parse_redis_url("redis+sentinel://:hunter2@h1:99999/m")
    assert "hunter2" not in str(exc.value)


def test_arq_settings_of_a_plain_url_are_what_arq_reads_from_it() -> None:
    """For a plain URL, arq's connection settings are exactly what arq's own from_dsn reads."""
    url = "redis://:pw@redis:6380/4"
    assert arq_redis_settings(url) == RedisSettings.from_dsn(url)


def test_arq_settings_of_a_sentinel_url_use_arqs_sentinel_mode() -> None:
    """For a Sentinel URL, arq's settings use its Sentinel mode with the hosts, master, database and credentials."""
    s = arq_redis_settings("redis+sentinel://u:pw@a:1,b:2/m/5")
    assert s.sentinel is True
    assert s.host == [("a", 1), ("b", 2)]
    assert (s.sentinel_master, s.database, s.username, s.password) == ("m", 5, "u", "pw")


async def test_connect_builds_a_sentinel_client_with_short_timeouts() -> None:
    """connect() on a Sentinel URL gives a master client with the short timeouts; the Sentinels get no password."""
    client = connect("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/m/3", socket_timeout=1.5)
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "m"
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"]) == (3, "pw")
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (2.0, 1.5)
        sentinels = pool.sentinel_manager.sentinels
        assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                for s in sentinels] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
        assert all(s.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.0 for s in sentinels)
        assert all(s.connection_pool.connection_kwargs.get("password") is None for s in sentinels)
    finally:
        await client.aclose()


def test_settings_accept_a_sentinel_url() -> None:
    """A Sentinel URL is a valid REDIS_URL, kept as written."""
    s = load_settings(RUNINFRA_WEBHOOK_SECRET=SECRET, REDIS_URL="redis+sentinel://h1,h2/m")
    assert s.redis_url == "redis+sentinel://h1,h2/m"


def test_settings_reject_a_malformed_redis_url_in_one_line() -> None:
    """A malformed REDIS_URL is a one-line ConfigError naming the setting, without the password."""
    with pytest.raises(ConfigError) as exc:
        load_settings(RUNINFRA_WEBHOOK_SECRET=SECRET, REDIS_URL="redis+sentinel://:hunter2@h1:x/m")
    message = str(exc.value)
    assert message.startswith("REDIS_URL: invalid setting (")
    assert "Sentinel port" in message
    assert "hunter2" not in message and "\n" not in message


def test_start_up_stops_with_exit_2_on_a_malformed_redis_url() -> None:
    """A process given a malformed REDIS_URL exits 2 with one line on stderr, without the password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINFRA_")}
    env.update(RUNINFRA_WEBHOOK_SECRET=SECRET, REDIS_URL="redis+sentinel://:hunter2@sentinel-0")
    proc = cli(env, "worker")
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "no master name" in lines[0], proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
