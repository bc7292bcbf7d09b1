"""Both vector stores for tests (fixtures ``store_kind`` and ``store`` in conftest): ``redis`` on the test's
Redis, ``qdrant`` in embedded mode in tmp_path."""

from __future__ import annotations

from pathlib import Path

STORES = ("redis", "qdrant")


def store_url(kind: str, tmp_path: Path) -> str:
    """The RUNINFRA_VECTOR_STORE value of ``kind`` for one test."""
    return "redis" if kind == "redis" else f"qdrant+path://{tmp_path / 'qdrant'}"
