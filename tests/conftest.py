"""Shared fixtures: a redis-server of our own per session (flushed per test), and a live receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings, load_settings
from tests.builders import OLD_SECRET, SECRET
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on a server this test session started itself (so flushing it is ours to do)."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, which it may stop, kill and restart."""
    with RedisServer(tmp_path) as server:
        yield server


def make_settings(redis_url: str, tmp_path: Path, **overrides: object) -> Settings:
    env: dict[str, object] = {
        "RUNINFRA_WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
        "REDIS_URL": redis_url,
        "RUNINFRA_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    env.update(overrides)
    return load_settings(**env)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url, tmp_path)


@pytest.fixture
def receiver_url(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url


# --- appended: no secret, API key or signature in any log line, for the whole suite ----------------------
# Every HMAC the test process computes (service.signature._hex_hmac, used by both sign and verify) is
# recorded; every structlog event, stdlib log record and *.log file under the session's temp dir (the
# output of every real process the tests start) is scanned for the webhook secrets, the gateway key and
# those signatures. A test during which one shows up fails at teardown, naming where it was seen.
import logging as _logging  # noqa: E402
import re as _re  # noqa: E402
from collections.abc import Callable as _Callable  # noqa: E402
from typing import Any as _Any  # noqa: E402

import structlog as _structlog  # noqa: E402

from service import signature as _signature  # noqa: E402
from tests.processes import STUB_KEY as _STUB_KEY  # noqa: E402

_HEX64 = _re.compile(r"[0-9a-f]{64}")


class LeakWatch:
    def __init__(self, needles: tuple[str, ...]) -> None:
        self.needles = needles
        self.signatures: set[str] = set()
        self.leaks: list[str] = []
        self._offsets: dict[Path, int] = {}

    def scan(self, text: str, where: str) -> None:
        for needle in self.needles:
            if needle in text:
                self.leaks.append(f"{where}: a configured secret/key ({needle[:6]}...)")
        for match in _HEX64.findall(text):
            if match in self.signatures:
                self.leaks.append(f"{where}: a computed signature ({match[:8]}...)")

    def scan_files(self, root: Path) -> None:
        for path in root.rglob("*.log"):
            start = self._offsets.get(path, 0)
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            self._offsets[path] = start + len(data)
            if data:
                self.scan(data.decode("utf-8", "replace"), str(path.relative_to(root)))

    def take(self) -> list[str]:
        leaks, self.leaks = self.leaks, []
        return leaks


class _ScanHandler(_logging.Handler):
    def __init__(self, watch: LeakWatch) -> None:
        super().__init__()
        self.watch = watch
        self.setFormatter(_logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: _logging.LogRecord) -> None:
        try:
            self.watch.scan(self.format(record), f"logging {record.name}")
        except Exception:
            self.handleError(record)


@pytest.fixture(scope="session")
def leak_watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeakWatch]:
    watch = LeakWatch((SECRET, OLD_SECRET, _STUB_KEY))
    real_hex_hmac: _Callable[[bytes, bytes], bytes] = _signature._hex_hmac

    def recording_hex_hmac(key: bytes, payload: bytes) -> bytes:
        digest = real_hex_hmac(key, payload)
        watch.signatures.add(digest.decode("ascii"))
        return digest

    def scan_event(logger: object, method: str, event_dict: _Any) -> _Any:
        watch.scan(repr(event_dict), f"structlog {event_dict.get('event')!r}")
        return event_dict

    _signature._hex_hmac = recording_hex_hmac  # type: ignore[assignment]
    processors = _structlog.get_config()["processors"]
    processors.insert(0, scan_event)  # in place: bound loggers keep a reference to this list
    _structlog.configure(processors=processors)
    handler = _ScanHandler(watch)
    _logging.getLogger().addHandler(handler)
    try:
        yield watch
    finally:
        _logging.getLogger().removeHandler(handler)
        if scan_event in processors:
            processors.remove(scan_event)
            _structlog.configure(processors=processors)
        _signature._hex_hmac = real_hex_hmac  # type: ignore[assignment]
    watch.scan_files(tmp_path_factory.getbasetemp())
    leaks = watch.take()
    if leaks:
        pytest.fail("secrets or signatures leaked into logs after the last test:\n" + "\n".join(sorted(set(leaks))))


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(leak_watch: LeakWatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    leak_watch.scan_files(tmp_path_factory.getbasetemp())
    leaks = leak_watch.take()
    if leaks:
        pytest.fail("secrets or signatures leaked into logs:\n" + "\n".join(sorted(set(leaks))), pytrace=False)
