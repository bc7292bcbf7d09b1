"""Errors a handler raises on purpose. Anything else a handler raises is treated as transient."""

from __future__ import annotations

__all__ = ["PermanentError", "TransientError"]


class PermanentError(Exception):
    """Retrying cannot help (bad configuration, impossible input): the event is dead-lettered with ``code``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class TransientError(Exception):
    """Worth another attempt later; ``retry_after`` (seconds) overrides the backoff when given."""

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
