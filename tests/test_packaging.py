"""The built wheel, installed into a fresh venv and used from outside the checkout, is one import package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools keeps a build/lib beside the sources, and would package stale files from it.
    src = tmp_path_factory.mktemp("src") / "runinfra-webhooks"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             "results", ".runinfra-dev", "artifacts", ".*_cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("runinfra_webhooks-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel pip-installed; its dependencies are lent by this environment through a .pth
    (so the test needs no network), while the project itself comes only from the wheel."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return python


def test_the_wheel_holds_one_top_level_package_with_its_data(wheel: Path) -> None:
    """Only runinfra_webhooks/ (and the dist-info) at the top; py.typed, the Lua script and examples inside."""
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"runinfra_webhooks", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in ("runinfra_webhooks/py.typed", "runinfra_webhooks/service/storage/ingest.lua",
                   "runinfra_webhooks/service/devtools/examples/deployment.ready.json",
                   "runinfra_webhooks/handlers/registry.py", "runinfra_webhooks/workers/jobs.py"):
        assert needed in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "runinfra-webhooks = runinfra_webhooks.service.cli.main:main" in entry_points


def test_installed_package_imports_from_outside_the_checkout(fresh_python: Path, tmp_path: Path) -> None:
    """`import runinfra_webhooks` works from the venv; the old top-level names service/handlers/workers do not."""
    code = """
import importlib, json
import runinfra_webhooks
missing = []
for name in ("service", "handlers", "workers"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        missing.append(name)
print(json.dumps({"file": runinfra_webhooks.__file__, "version": runinfra_webhooks.__version__, "missing": missing}))
"""
    out = subprocess.run([str(fresh_python), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert found["file"].startswith(str(fresh_python.parents[1]))
    assert found["version"] == "0.1.0"
    assert found["missing"] == ["service", "handlers", "workers"]


def test_installed_console_script_runs(fresh_python: Path, tmp_path: Path) -> None:
    """The venv's runinfra-webhooks answers --help and lists the built-in handlers."""
    script = fresh_python.parent / "runinfra-webhooks"
    helped = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "serve" in helped.stdout
    listed = subprocess.run([str(script), "handlers", "--json"], cwd=tmp_path, capture_output=True, text=True,
                            check=False, env={"PATH": "/usr/bin:/bin"})
    assert listed.returncode == 0, listed.stderr
    assert {r["origin"] for r in json.loads(listed.stdout)} == {"builtin"}
