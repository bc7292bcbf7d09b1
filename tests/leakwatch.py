"""Suite-wide check: no secret, API key or signature in any log line.

Every HMAC the test process computes (service.signature._hex_hmac, used by both sign and verify) is
recorded; every structlog event, stdlib log record and *.log file under the session's temp dir (the
output of every real process the tests start) is scanned for the webhook secrets, the gateway key and
those signatures. A test during which one shows up fails at teardown, naming where it was seen.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

_HEX64 = re.compile(r"[0-9a-f]{64}")


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


class ScanHandler(logging.Handler):
    def __init__(self, watch: LeakWatch) -> None:
        super().__init__()
        self.watch = watch
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.watch.scan(self.format(record), f"logging {record.name}")
        except Exception:
            self.handleError(record)
