"""The state directory: where it is, how it is created, what is refused."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from procguard.errors import StateDirError
from procguard.instances.statedir import resolve_state_dir, state_subdir

from .helpers import PROCGUARD, python_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.delenv("PROCGUARD_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert resolve_state_dir() == tmp_path / "tmp" / f"procguard-{os.geteuid()}"

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert resolve_state_dir() == runtime / "procguard"

    monkeypatch.setenv("PROCGUARD_STATE_DIR", str(tmp_path / "env"))
    assert resolve_state_dir() == tmp_path / "env"

    assert resolve_state_dir(tmp_path / "explicit") == tmp_path / "explicit"
    for name in (f"tmp/procguard-{os.geteuid()}", "run/procguard", "env", "explicit"):
        assert _mode(tmp_path / name) == 0o700


def test_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = resolve_state_dir(tmp_path / "deep" / "state")
        sub = state_subdir(path, "instances")
    finally:
        os.umask(old)
    assert _mode(path) == 0o700 and _mode(sub) == 0o700
    assert _mode(tmp_path / "deep") == 0o700


def test_read_only_lookup_creates_nothing(tmp_path: Path) -> None:
    path = resolve_state_dir(tmp_path / "absent", create=False)
    assert not path.exists()


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="symlink"):
        resolve_state_dir(link)
    with pytest.raises(StateDirError, match="symlink"):
        resolve_state_dir(link, create=False)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, mode)
    with pytest.raises(StateDirError, match="writable by group or others") as excinfo:
        resolve_state_dir(path)
    assert "chmod 700" in str(excinfo.value)


def test_not_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(StateDirError, match="not a directory"):
        resolve_state_dir(path)


def test_foreign_owner_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(StateDirError, match="owned by uid 65534"):
        resolve_state_dir(path)


def test_subdirectory_checked_too(tmp_path: Path) -> None:
    base = resolve_state_dir(tmp_path / "s")
    (base / "instances").mkdir(mode=0o700)
    os.chmod(base / "instances", 0o777)
    with pytest.raises(StateDirError, match="writable"):
        state_subdir(base, "instances")


@pytest.mark.parametrize("command", [["ps"], ["cleanup", "x", "--dry-run"]])
def test_cli_refuses_unsafe_state_dir_with_one_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o777)
    result = subprocess.run(
        [*PROCGUARD, *command, "--state-dir", str(path)],
        env=python_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "writable" in lines[0]
    assert "Traceback" not in result.stderr
