"""The running ``dev``, as a second terminal finds it: ``.runinfra-dev/dev.json`` in the working directory.

``dev`` writes the file once everything listens and removes it when it stops. A command started in the same
directory with no ``REDIS_URL`` (or no secret) set reads it, checks that the ``dev`` that wrote it is still
alive, and takes the missing settings from it. An explicitly set variable always wins.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["SESSION_FILE", "DevSession", "find_running_dev", "remove_session", "write_session"]

SESSION_FILE = Path(".runinfra-dev") / "dev.json"


@dataclass(frozen=True)
class DevSession:
    pid: int
    redis_url: str
    receiver_url: str
    gateway_url: str
    # Only dev's own throw-away secret is written down; a secret the user exported stays in their environment.
    webhook_secret: str | None = None
    children: dict[str, int] = field(default_factory=dict)

    def defaults(self) -> dict[str, str]:
        """Settings by variable name, for what the environment does not set."""
        found = {"REDIS_URL": self.redis_url}
        if self.webhook_secret is not None:
            found["RUNINFRA_WEBHOOK_SECRET"] = self.webhook_secret
        return {name: value for name, value in found.items() if not os.environ.get(name)}


def write_session(session: DevSession, workdir: Path) -> Path:
    path = workdir / SESSION_FILE.name
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold dev's secret
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(session), f)
    os.replace(tmp, path)
    return path


def remove_session(workdir: Path, pid: int) -> None:
    path = workdir / SESSION_FILE.name
    session = _read(path)
    if session is not None and session.pid == pid:
        path.unlink(missing_ok=True)


def _read(path: Path) -> DevSession | None:
    try:
        raw = json.loads(path.read_text("utf-8"))
        return DevSession(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_running_dev(cwd: Path | None = None) -> DevSession | None:
    """The ``dev`` running from this directory, or None (no file, a stale file, or nothing there)."""
    session = _read((cwd or Path.cwd()) / SESSION_FILE)
    return session if session is not None and _alive(session.pid) else None
