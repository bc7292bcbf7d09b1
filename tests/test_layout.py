"""Imports run one way: the command line on top, storage and the pure core at the bottom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PKG = "runinfra_webhooks."
# Each part and the parts it may import (besides itself). Lower rows never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "service.core": set(),
    "service.storage": {"service.core"},
    # Only to check REDIS_URL with the storage layer's parser and the route limits with the core's.
    "service.settings": {"service.core", "service.storage"},
    "service.gateway": {"service.settings", "service.core", "service.storage"},
    "service.tracing": {"service.core", "service.storage"},
    "service.logs": set(),
    "service.gc_tuning": set(),
    "handlers": {"service.core", "service.storage", "service.gateway", "service.settings"},
    "workers": {"handlers", "service.core", "service.storage", "service.gateway", "service.settings",
                "service.tracing"},
    "service.receiver": {"handlers", "service.core", "service.storage", "service.settings", "service.tracing"},
    "service.devtools": {"service.core", "service.storage", "service.tracing"},
    # The console shares the receiver's problem documents and request ids, and reads what handlers store.
    "service.console": {"handlers", "service.receiver", "service.core", "service.storage", "service.settings",
                        "service.tracing"},
    "service.cli": {"handlers", "workers", "service.receiver", "service.console", "service.devtools", "service.core",
                    "service.storage", "service.gateway", "service.settings", "service.logs", "service.gc_tuning",
                    "service.tracing"},
}
FOLDERS = {"service": "service", "handlers": "handlers", "workers": "workers"}


def _part(module: str) -> str:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    raise AssertionError(f"{module} belongs to no known part: add it to ALLOWED")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__init__")
            if name in FOLDERS or name == "service.__init__":
                continue
            found.append((name, path))
    return found


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
            out.add(node.module.removeprefix(PKG))
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix(PKG) for a in node.names if a.name.startswith(PKG))
    return out


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_module_imports_only_downward(module: str, path: Path) -> None:
    """Every import of ours goes to the module's own part or to one it may depend on."""
    mine = _part(module)
    wrong = sorted(i for i in _imports(path) if _part(i) != mine and _part(i) not in ALLOWED[mine])
    assert not wrong, f"{module} ({mine}) imports {wrong}"


def test_the_facade_imports_only_the_core_and_the_handler_api() -> None:
    """runinfra_webhooks/__init__ re-exports from the pure core and the handler API alone."""
    imported = _imports(ROOT / "api" / "__init__.py")
    assert imported and all(i.startswith("service.core.") or i in {"handlers.registry", "handlers.context",
                                                                    "handlers.errors"} for i in imported), imported
