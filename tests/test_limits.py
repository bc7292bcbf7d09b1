"""Parsing RUNINFRA_GATEWAY_RATE_LIMIT and RUNINFRA_GATEWAY_CONCURRENCY, and how a bad value stops start-up."""

from __future__ import annotations

import pytest

from runinfra_webhooks.service.core.route_limits import RouteLimits, parse_concurrency, parse_rate_limits, route_limits
from runinfra_webhooks.service.settings import ConfigError, load_settings


def test_rates_become_whole_millisecond_spacing_rounded_up() -> None:
    """n/s and n/m turn into the spacing between calls, never shorter than the rate allows."""
    assert parse_rate_limits("/audio/speech=10/s, /embeddings=120/m,/chat/completions=3/s") == {
        "/audio/speech": 100, "/embeddings": 500, "/chat/completions": 334}
    assert parse_rate_limits("") == {}
    assert parse_rate_limits("/embeddings/=0.5/s") == {"/embeddings": 2000}


def test_limits_of_both_settings_merge_per_route() -> None:
    """A route named in either setting gets its limits; the others have none."""
    merged = route_limits("/audio/speech=10/s", "/audio/speech=4,/embeddings=2")
    assert merged == {"/audio/speech": RouteLimits(100, 4), "/embeddings": RouteLimits(0, 2)}
    assert not RouteLimits().limited


@pytest.mark.parametrize("value", ["/a=10", "/a=10/h", "/a=0/s", "a=1/s", "/a=1/s,/a=2/s", "=1/s", "/a=-1/s"])
def test_rejects_malformed_rate_limits(value: str) -> None:
    """A rate that is not <route>=<n>/s or /m is refused with the entry named."""
    with pytest.raises(ValueError, match=r"/a|a=|=1"):
        parse_rate_limits(value)


@pytest.mark.parametrize("value", ["/a=0", "/a=x", "/a=1.5", "/a", "/a=1,/a=2"])
def test_rejects_malformed_concurrency(value: str) -> None:
    """Concurrency is a whole number of at least 1 per route."""
    with pytest.raises(ValueError):
        parse_concurrency(value)


def test_bad_limit_setting_stops_start_up_naming_the_variable() -> None:
    """A bad limit is one clear line naming the variable, like every other setting."""
    with pytest.raises(ConfigError, match=r"^RUNINFRA_GATEWAY_CONCURRENCY: invalid setting"):
        load_settings(RUNINFRA_WEBHOOK_SECRET="s", RUNINFRA_GATEWAY_CONCURRENCY="/audio/speech=lots")


def test_alert_url_without_secret_stops_start_up() -> None:
    """Alerts are always signed: a URL without RUNINFRA_ALERT_SECRET refuses to start."""
    with pytest.raises(ConfigError, match=r"^RUNINFRA_ALERT_SECRET: required setting is not set"):
        load_settings(RUNINFRA_WEBHOOK_SECRET="s", RUNINFRA_ALERT_URL="http://127.0.0.1:9/alerts")
    with pytest.raises(ConfigError, match=r"^RUNINFRA_ALERT_URL: invalid setting"):
        load_settings(RUNINFRA_WEBHOOK_SECRET="s", RUNINFRA_ALERT_URL="ftp://x", RUNINFRA_ALERT_SECRET="a")
