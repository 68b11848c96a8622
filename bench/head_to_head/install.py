"""Install the peers into the benchmark's own folder: ``python -m bench.head_to_head.install``.

- bench/.peers/venv: a virtualenv with supervisor, superlance, circus and
  matplotlib from PyPI (bench/requirements-peers.txt), never the project's
  environment;
- bench/.peers/node: PM2 from the npm registry (``npm install --prefix``).

Nothing is downloaded except by package name through pip and npm, and no
peer code is copied into the repository (bench/.peers/ is git-ignored).
Idempotent: an existing install is kept unless ``--force``. PM2 is always
run with PM2_HOME inside bench/.peers/run, so no ``~/.pm2`` is touched.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "bench" / ".peers"
REQUIREMENTS = REPO / "bench" / "requirements-peers.txt"
PM2_VERSION = "7.0.4"
#: circus 0.19 runs on 3.11 with the pins in requirements-peers.txt; newer
#: interpreters are tried after it.
PYTHONS = ("python3.11", "python3.12", "python3.10", "python3")


def _python() -> str:
    for name in PYTHONS:
        found = shutil.which(name)
        if found:
            return found
    return sys.executable


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def install(force: bool = False) -> None:
    """Create bench/.peers/{venv,node} (idempotent unless ``force``)."""
    venv = PEERS / "venv"
    if force and venv.exists():
        shutil.rmtree(venv)
    if not (venv / "bin" / "python").exists():
        _run([_python(), "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)])
    node = PEERS / "node"
    if force and node.exists():
        shutil.rmtree(node)
    pm2 = node / "node_modules" / ".bin" / "pm2"
    if not pm2.exists():
        npm = shutil.which("npm")
        if npm is None:
            msg = "npm not found: install Node.js (20 or later) to benchmark PM2"
            raise SystemExit(msg)
        node.mkdir(parents=True, exist_ok=True)
        _run([npm, "install", "--prefix", str(node), "--no-audit", "--no-fund", f"pm2@{PM2_VERSION}"])
    print(f"peers installed in {PEERS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.head_to_head.install", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall from scratch")
    args = parser.parse_args(argv)
    install(force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
