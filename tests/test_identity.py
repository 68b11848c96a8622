"""Markers and (pid, start time) identities, on real processes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psutil
import pytest

from procguard.errors import UsageError
from procguard.instances.identity import ProcessIdentity, find_marked
from procguard.instances.marker import MARKER_ENV, new_marker, parse_marker, read_marker, validate_name
from procguard.instances.spawn import spawn_process
from procguard.instances.statedir import namespace_of

from .helpers import PYTHON, TEST_NAMESPACE, python_env, wait_for, wait_for_file

SLEEPER = [PYTHON, "-c", "import time; time.sleep(600)"]

#: Double fork + setsid: the grandchild leaves the tree and its session.
ESCAPEE = r"""
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def test_marker_format_and_parsing() -> None:
    marker = new_marker("collector", "0badcafe")
    name, ident = parse_marker(marker)
    assert name == "collector" and marker == f"collector:{ident}"
    namespace, dash, random_part = ident.partition("-")
    assert (namespace, dash, len(random_part)) == ("0badcafe", "-", 12)
    assert parse_marker(marker).namespace == "0badcafe"
    assert new_marker("collector", "0badcafe") != marker
    # Names may contain colons (derived from module:function); the id is after the last one.
    assert parse_marker(new_marker("pkg.mod:func", "0badcafe")).name == "pkg.mod:func"
    assert parse_marker("nonsense") is None
    assert parse_marker("../x:abc") is None
    # An older procguard's marker (no namespace) parses, and names no state directory.
    assert parse_marker("collector:0123456789ab") == ("collector", "0123456789ab")
    for no_namespace in ("collector:0123456789ab", "c:0BADCAFE-1234", "c:0badcaf-1234", "c:0badcafe-"):
        assert parse_marker(no_namespace).namespace is None
    with pytest.raises(UsageError):
        new_marker("a/b", "0badcafe")
    with pytest.raises(ValueError, match="namespace"):
        new_marker("collector", "../x")


def test_namespace_is_the_state_directory_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "state"
    real.mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    ns = namespace_of(real)
    assert len(ns) == 8 and int(ns, 16) >= 0
    assert namespace_of(tmp_path / "link" / "state") == ns  # two spellings, one directory
    assert namespace_of(str(real) + "/../state") == ns
    assert namespace_of(tmp_path / "other") != ns
    monkeypatch.setenv("PROCGUARD_STATE_DIR", str(real))
    assert namespace_of() == ns  # None: the state directory the environment asks for
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROCGUARD_STATE_DIR", "state")
    assert namespace_of() == ns


@pytest.mark.parametrize("name", ["collector", "analyticbot.collector", "w-1", "x_y", "mod:func", "a@b+c"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


def test_identity_matches_only_the_same_process(spawn) -> None:
    proc = spawn(SLEEPER)
    ident = ProcessIdentity.of(proc.pid)
    assert ident.matches()
    assert ident.process().pid == proc.pid
    assert ProcessIdentity.from_json(ident.to_json()) == ident
    # Same pid, different start time: what a recycled pid looks like.
    impostor = ProcessIdentity(proc.pid, ident.create_time - 100.0, (ident.start_ticks or 0) + 5)
    assert not impostor.matches() and impostor.process() is None
    no_ticks = ProcessIdentity(proc.pid, ident.create_time - 100.0)
    assert not no_ticks.matches()
    proc.kill()
    proc.wait(timeout=10)
    assert not ident.matches()


@pytest.mark.parametrize(
    "data",
    [None, [], {"pid": 0, "create_time": 1.0}, {"pid": -1, "create_time": 1.0}, {"pid": 1, "create_time": 1.0},
     {"pid": "12", "create_time": 1.0}, {"pid": True, "create_time": 1.0}, {"pid": 12}, {"pid": 12, "create_time": -3},
     {"pid": 10**12, "create_time": 1.0}, {"pid": 12, "create_time": 1.0, "start_ticks": "x"}],
)
def test_implausible_identities_are_rejected(data: object) -> None:
    assert ProcessIdentity.from_json(data) is None


def test_find_marked_sees_marked_tree_and_escapee_not_decoys(spawn, tmp_path: Path) -> None:
    name = f"idtest{uuid.uuid4().hex[:8]}"  # unique: other suites may run at the same time
    marker = new_marker(name, TEST_NAMESPACE)
    marked = spawn_process(SLEEPER, marker=marker, env=python_env())
    escapee_file = tmp_path / "escapee.pid"
    launcher = spawn_process([PYTHON, "-c", ESCAPEE, str(escapee_file)], marker=marker, env=python_env(),
                             parent_death_signal=None)
    launcher.wait(timeout=30)
    escapee = psutil.Process(int(wait_for_file(escapee_file)))
    decoy = spawn([PYTHON, "-c", "import time; time.sleep(600)", name, marker])  # name in argv, no marker
    other = spawn(SLEEPER, env=python_env(**{MARKER_ENV: new_marker(name + "-other", TEST_NAMESPACE)}))
    twin = spawn(SLEEPER, env=python_env(**{MARKER_ENV: new_marker(name, "0badcafe")}))  # another state dir
    try:
        assert escapee.ppid() != launcher.pid
        assert os.getsid(escapee.pid) != os.getsid(0)  # left our session
        assert read_marker(marked.pid) == marker
        assert read_marker(decoy.pid) is None
        found = {p.pid for p in find_marked(name, namespace=TEST_NAMESPACE)}
        assert found == {marked.pid, escapee.pid}
        assert {p.pid for p in find_marked(name)} == found | {twin.pid}
        assert {p.pid for p in find_marked(None, marker=marker)} == found
        everything = {p.pid for p in find_marked(None)}
        assert found | {other.pid} <= everything
        assert decoy.pid not in everything
    finally:
        for p in (psutil.Process(marked.pid), escapee):
            p.kill()
        marked.wait(timeout=10)
        wait_for(lambda: not escapee.is_running() or escapee.status() == psutil.STATUS_ZOMBIE,
                 message="escapee gone")


def test_read_marker_of_missing_process_is_none() -> None:
    assert read_marker(2**22 + 1) is None


def test_create_time_from_proc_is_psutils_create_time() -> None:
    """A lock record written without psutil must match one written with it (no tolerance)."""
    from procguard.instances.identity import create_time

    assert create_time(os.getpid()) == psutil.Process().create_time()
    assert create_time(2**22 + 1) is None  # above pid_max: no such process
