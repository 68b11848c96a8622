"""Files in the state directory: never written or read through a link, hostile ones moved aside."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from procguard.instances.statefiles import UnsafeFileError, open_private, private_dir
from procguard.supervisor.logs import RotatingFile, follow, log_dir, tail

from .hostile_state import aside, mode, warnings

# -- open_private / private_dir ---------------------------------------------------------


def test_a_symlink_is_renamed_aside_and_its_target_never_touched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    path = tmp_path / "w.log"
    path.symlink_to(victim)
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, b"log line\n")
    os.close(fd)
    assert victim.read_bytes() == b"precious\n" and mode(victim) == 0o644
    assert path.read_bytes() == b"log line\n" and not path.is_symlink() and mode(path) == 0o600
    [moved] = aside(tmp_path, "w.log", "unsafe")
    assert moved.is_symlink() and os.readlink(moved) == str(victim)
    [line] = warnings(caplog)
    assert str(path) in line and "is a symlink" in line and moved.name in line


@pytest.mark.parametrize("kind", ["hardlink", "directory", "fifo", "dangling"])
def test_other_hostile_paths_are_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    path = tmp_path / "w.log"
    other = tmp_path / "elsewhere"
    if kind == "hardlink":
        other.write_bytes(b"someone else's file\n")
        os.link(other, path)
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("kept")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(tmp_path / "missing")
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # a FIFO must not block this
    os.write(fd, b"mine\n")
    os.close(fd)
    assert path.read_bytes() == b"mine\n" and os.stat(path).st_nlink == 1
    assert not (tmp_path / "missing").exists()  # O_CREAT never went through the dangling link
    if kind == "hardlink":
        assert other.read_bytes() == b"someone else's file\n"
    [moved] = aside(tmp_path, "w.log", "unsafe")
    assert (moved / "inside").exists() if kind == "directory" else True
    assert len(warnings(caplog)) == 1


def test_a_plain_file_of_ours_is_appended_to_and_made_private(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_bytes(b"old\n")
    path.chmod(0o644)
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, b"new\n")
    os.close(fd)
    assert path.read_bytes() == b"old\nnew\n" and mode(path) == 0o600
    assert list(tmp_path.iterdir()) == [path]


def test_private_dir_replaces_a_file_or_symlink_and_tightens_a_loosemode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    (tmp_path / "logs").write_text("not a directory")
    (tmp_path / "link").symlink_to(elsewhere)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    for name in ("logs", "link", "loose", "new"):
        path = private_dir(tmp_path / name)
        assert path.is_dir() and not path.is_symlink() and mode(path) == 0o700
    assert list(elsewhere.iterdir()) == [] and mode(elsewhere) == 0o755  # the link's target: untouched
    assert len(aside(tmp_path, "logs", "unsafe")) == 1 and len(aside(tmp_path, "link", "unsafe")) == 1
    assert len(warnings(caplog)) == 3  # two moved aside, one tightened


def test_log_dir_survives_a_file_where_logs_should_be(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("x")
    path = log_dir(tmp_path, "proj", create=True)
    assert path == tmp_path / "logs" / "proj" and path.is_dir()


# -- logs ---------------------------------------------------------------------------------


def test_rotation_never_writes_or_truncates_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 100)
    path = tmp_path / "w.log"
    log = RotatingFile(path, max_bytes=50, backups=2)
    (tmp_path / "w.log.1").symlink_to(victim)  # an old file replaced by a link
    log.write(b"a" * 40)
    log.write(b"b" * 40)  # rotates: .1 (the link) is renamed to .2, never followed
    log.close()
    assert victim.read_bytes() == b"v" * 100
    assert (tmp_path / "w.log.2").is_symlink() and (tmp_path / "w.log.1").read_bytes() == b"a" * 40

    keep_none = tmp_path / "k.log"
    log = RotatingFile(keep_none, max_bytes=50, backups=0)
    log.write(b"c" * 40)
    keep_none.unlink()
    keep_none.symlink_to(victim)  # swapped while open: truncation must hit our file, not the link's target
    log.write(b"d" * 40)
    log.close()
    assert victim.read_bytes() == b"v" * 100
    assert keep_none.read_bytes() == b"d" * 40 and not keep_none.is_symlink()


def test_reading_a_log_never_follows_a_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not print\n")
    path = tmp_path / "w.log"
    path.symlink_to(secret)
    with pytest.raises(UnsafeFileError, match="is a symlink"):
        tail(path, 10)
    with pytest.raises(UnsafeFileError, match="is a symlink"):
        next(follow(path))
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        tail(path, 10)


# -- the control socket's path ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "file", "symlink", "stale_socket"])
def test_the_control_socket_path_is_cleared_whatever_is_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    import selectors
    import socket

    from procguard.supervisor.control import ControlServer, socket_path

    path = socket_path(tmp_path, "proj")
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o644)
    if kind == "directory":
        path.mkdir()
    elif kind == "file":
        path.write_text("not a socket\n")
    elif kind == "symlink":
        path.symlink_to(victim)
    else:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()  # a dead supervisor's socket: removed quietly
    with selectors.DefaultSelector() as selector:
        server = ControlServer(path, lambda request, peer: peer.send({"ok": True}), selector)
        try:
            assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode(path) == 0o600
        finally:
            server.close()
    assert victim.read_text() == "keep\n" and mode(victim) == 0o644
    moved = aside(tmp_path, path.name, "unsafe")
    assert len(moved) == (0 if kind == "stale_socket" else 1)
    assert len(warnings(caplog)) == len(moved)
