"""The package as PyPI would get it: built with ``python -m build``, checked, installed outside the checkout.

The wheel must carry the licence text and say it is Linux-only; the sdist must
carry the docs and everything its tests need; the README (the PyPI page) must
link its docs by absolute URL; and the wheel installed into a fresh venv in a
temp directory must run a stack: ``--version``, ``up -d``, the status page,
``down``.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

import procguard

from .helpers import REPO_ROOT, free_port, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.slow

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
DOCS_URL = PYPROJECT["project"]["urls"]["Documentation"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built once from the checkout into a temp directory."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "dir": out}


def test_twine_accepts_both_files(dist: dict[str, Path]) -> None:
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]),
                             str(dist["sdist"])], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_carries_the_licence_the_version_and_linux_only(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = wheel.namelist()
        info = f"procguard-{procguard.__version__}.dist-info"
        assert f"{info}/licenses/LICENSE" in names
        assert "MIT License" in wheel.read(f"{info}/licenses/LICENSE").decode()
        meta = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
    assert meta["Version"] == procguard.__version__  # the one version, read from __init__.py
    assert "version" not in PYPROJECT["project"]
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert not [c for c in classifiers if c.startswith("Operating System") and "Linux" not in c]
    assert meta.get_all("Project-URL")


def test_the_sdist_carries_the_docs_and_what_its_tests_need(dist: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        sdist.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    for name in ("LICENSE", "README.md", "Makefile", "tests/conftest.py", "tests/helpers.py"):
        assert (root / name).is_file(), name
    for folder in ("tests/manager_workers", "tests/supervisor_workers", "examples/analyticbot", "bench"):
        assert any((root / folder).iterdir()), folder
    assert {p.name for p in (REPO_ROOT / "docs").glob("*.md")} <= {p.name for p in (root / "docs").glob("*.md")}
    assert not list(root.rglob("__pycache__"))
    assert not (root / "bench" / ".peers").exists()  # the peers' installs stay out
    # Its tests can be collected from the unpacked sdist alone (the code under test from its own src).
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^(\d+) tests collected", result.stdout, re.M), result.stdout[-500:]


def test_the_readme_links_its_docs_by_absolute_url() -> None:
    """On PyPI a relative link is dead: every docs link is under the Documentation URL and exists."""
    readme = (REPO_ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert not [t for t in targets if not re.match(r"[a-z]+://|#|mailto:", t)], "relative links in README.md"
    docs = [t for t in targets if t.startswith(DOCS_URL)]
    assert docs
    for target in docs:
        page = target[len(DOCS_URL):].split("#", 1)[0]
        assert (REPO_ROOT / "docs" / page).is_file(), target


def test_the_wheel_runs_a_stack_installed_outside_the_checkout(dist: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(dist["wheel"])],
                         capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PROCGUARD_STATE_DIR": str(tmp_path / "state")}
    procguard_bin = str(venv / "bin" / "procguard")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([procguard_bin, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"procguard {procguard.__version__}"
    where = run("up", "--help")
    assert where.returncode == 0
    (tmp_path / "procguard.toml").write_text('[workers.idle]\ncommand = ["sleep", "600"]\n')
    port = free_port()
    up = run("up", "-d", "--status-port", str(port))
    try:
        assert up.returncode == 0, up.stdout + up.stderr

        def page() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=5) as response:
                    return response.read()
            except OSError:
                return None

        workers = json.loads(wait_for(page, message="the status page of the installed package"))
        assert "idle" in json.dumps(workers)
        status = run("status", "--json")
        assert status.returncode == 0 and '"idle"' in status.stdout
    finally:
        down = run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert page() is None  # the supervisor is gone, its port closed
