"""``procguard cleanup`` end to end: real instances, escapees, decoys, legacy workers, shells."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from .helpers import PROCGUARD, PYTHON, python_env, wait_for, wait_for_file
from .test_lock import CANARY, assert_untouched, start_holder


def unique(prefix: str) -> str:
    """Names unique across concurrently running suites (cleanup NAME matches markers by name)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROCGUARD, *args], env=python_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def gone(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def decoy(spawn, tmp_path: Path, tag: str, *words: str, **kwargs) -> tuple[subprocess.Popen[bytes], Path]:
    """A canary whose command line contains ``words`` (what pkill -f would match)."""
    log, ready = tmp_path / f"decoy-{tag}.signals", tmp_path / f"decoy-{tag}.ready"
    proc = spawn([PYTHON, "-c", CANARY, str(log), str(ready), *words], **kwargs)
    wait_for_file(ready, proc=proc)
    return proc, log


def test_cleanup_name_stops_holder_children_and_escapee_not_decoys(state_dir: Path, spawn, tmp_path: Path) -> None:
    name = unique("cu")
    _holder, info = start_holder(spawn, tmp_path, name, children=2, escapee=True)
    everything = [info["holder"], *info["children"], info["escapee"]]
    decoys = [
        decoy(spawn, tmp_path, "argv", name, f"--name={name}"),
        decoy(spawn, tmp_path, "file", f"/var/log/{name}.log", start_new_session=True),
    ]
    assert all(not gone(pid) for pid in everything)

    result = cli("cleanup", name, "--grace", "5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["complete"] is True
    by_pid = {p["pid"]: p for p in report["processes"]}
    assert set(by_pid) == set(everything)
    for entry in by_pid.values():
        assert entry["result"] in ("terminated", "killed", "already_gone")
        assert entry["command"] and entry["name"] and entry["reason"]
    assert "holds the lock" in by_pid[info["holder"]]["reason"]
    assert info["marker"] in by_pid[info["escapee"]]["reason"]
    for pid in everything:
        assert gone(pid), f"pid {pid} survived cleanup"
    for proc, log in decoys:
        assert_untouched(proc, log)


def test_dry_run_lists_and_signals_nothing(state_dir: Path, spawn, tmp_path: Path) -> None:
    name = unique("dry")
    holder, info = start_holder(spawn, tmp_path, name, children=1)
    result = cli("cleanup", name, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert str(info["holder"]) in result.stdout and str(info["children"][0]) in result.stdout
    assert "would stop" in result.stdout
    result = cli("cleanup", name, "--dry-run", "--json")
    report = json.loads(result.stdout)
    assert {p["result"] for p in report["processes"]} == {"would_stop"}
    assert holder.poll() is None and not gone(info["children"][0])


def test_unknown_name_is_nothing_to_do(state_dir: Path) -> None:
    result = cli("cleanup", unique("nobody"))
    assert result.returncode == 0, result.stderr
    assert "nothing to stop" in result.stdout


def test_term_ignoring_holder_is_killed_after_grace(state_dir: Path, spawn, tmp_path: Path) -> None:
    name = unique("stub")
    holder, _info = start_holder(spawn, tmp_path, name, ignore_term=True)
    result = cli("cleanup", name, "--grace", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["processes"]
    assert entry["result"] == "killed"
    assert holder.wait(timeout=10) == -9


LEGACY = r"""
import os, subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)]
open(sys.argv[1] + ".tmp", "w").write(" ".join(str(k.pid) for k in kids))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def test_match_stops_legacy_trees_and_spares_the_calling_shell(state_dir: Path, spawn, tmp_path: Path) -> None:
    pattern = unique("legacy-worker-")
    workers, kids = [], []
    for i in range(2):
        ready = tmp_path / f"legacy{i}"
        proc = spawn([PYTHON, "-c", LEGACY, str(ready), "--queue", pattern], start_new_session=True)
        workers.append(proc)
        kids += [int(x) for x in wait_for_file(ready, proc=proc).split()]
    others = []
    if os.geteuid() == 0:  # a process of another user whose command line matches
        others.append(spawn(["sh", "-c", f"sleep 600; : {pattern}"], user=65534))
        wait_for(lambda: psutil.Process(others[0].pid).children(), message="other user's sleep")

    # The calling shell's own command line contains the pattern: pkill -f would kill it.
    script = (
        f"{' '.join(PROCGUARD)} cleanup --match '{pattern}' --grace 5 --json > {tmp_path / 'report.json'}; "
        f"echo shell-survived-{pattern} status=$?"
    )
    shell = spawn(["bash", "-c", script], cwd=str(tmp_path))
    out, err = shell.communicate(timeout=60)
    assert shell.returncode == 0, err.decode()
    assert f"shell-survived-{pattern} status=0" in out.decode()

    report = json.loads((tmp_path / "report.json").read_text())
    stopped = {p["pid"] for p in report["processes"]}
    assert stopped == {w.pid for w in workers} | set(kids)
    spared = {s["pid"]: s["reason"] for s in report["spared"]}
    assert "ancestors" in spared[shell.pid]
    for w in workers:
        assert w.wait(timeout=10) == -15
    for pid in kids:
        wait_for(lambda pid=pid: gone(pid), message=f"legacy child {pid} stopped")
    for other in others:
        assert other.poll() is None
        assert "another user" in spared[other.pid]


def test_match_lists_what_matched_before_signalling(state_dir: Path, spawn, tmp_path: Path) -> None:
    pattern = unique("listed-")
    ready = tmp_path / "legacy"
    worker = spawn([PYTHON, "-c", LEGACY, str(ready), pattern], start_new_session=True)
    wait_for_file(ready, proc=worker)
    result = cli("cleanup", "--match", pattern, "--grace", "5")
    assert result.returncode == 0, result.stderr
    found_at = result.stdout.index("found 3 process(es)")
    assert str(worker.pid) in result.stdout[found_at:]
    assert result.stdout.index("terminated") > found_at


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cleanup"], "give an instance NAME"),
        (["cleanup", "x", "--match", "y"], "not both"),
        (["cleanup", "--match", ""], "empty pattern"),
        (["cleanup", "--match", "(unclosed"], "not a valid regular expression"),
        (["cleanup", "../etc", "--dry-run"], "not valid"),
        (["cleanup", "x", "--grace", "soon"], "--grace"),
    ],
)
def test_bad_input_is_one_line_exit_2(state_dir: Path, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


#: A marked process that, on SIGTERM, starts its own replacement before exiting. The
#: replacement starts with SIGTERM blocked (the mask survives exec), so a SIGTERM that
#: arrives before its handler is installed stays pending instead of killing it.
PHOENIX = r"""
import os, signal, subprocess, sys, time
def reborn(signum, frame):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[1]], start_new_session=True)
    os._exit(0)
signal.signal(signal.SIGTERM, reborn)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
if len(sys.argv) > 2:
    open(sys.argv[2], "w").write("ready")
time.sleep(600)
"""


def test_respawning_target_is_reported_and_exit_status_is_4(state_dir: Path, spawn, tmp_path: Path) -> None:
    from procguard.instances.identity import find_marked
    from procguard.instances.marker import MARKER_ENV, new_marker
    from procguard.instances.statedir import namespace_of

    name = unique("phoenix")
    ready = tmp_path / "phoenix.ready"
    first = spawn([PYTHON, "-c", PHOENIX, PHOENIX, str(ready)], env=python_env(**{MARKER_ENV: new_marker(name, namespace_of())}))
    wait_for_file(ready, proc=first)
    try:
        result = cli("cleanup", name, "--grace", "5", "--json")
        assert result.returncode == 4, result.stderr
        report = json.loads(result.stdout)
        assert report["complete"] is False
        results = [p["result"] for p in report["processes"]]
        assert results == ["terminated"] * 3 + ["respawned"]
        assert "incomplete" in result.stderr and "respawned" in result.stderr
    finally:
        for _ in range(50):  # stop the last replacement without triggering another
            left = find_marked(name)
            if not left:
                break
            for p in left:
                p.kill()
            psutil.wait_procs(left, timeout=5)


def test_a_stack_worker_name_means_that_stack_s_instance(state_dir: Path, tmp_path: Path) -> None:
    """The README's 'procguard cleanup collector --dry-run' beside a running analyticbot stack."""
    from .supervisor_workers.stackkit import write_config

    sleeper = [PYTHON, "-c", "import time; time.sleep(600)"]
    configs = []
    for project, workers in (("analyticbot", ("collector", "api")), ("shop", ("api",))):
        (tmp_path / project).mkdir()
        configs.append(write_config(tmp_path / project, {w: {"command": sleeper} for w in workers},
                                    project=project, defaults={"grace": "5s"}))
    try:
        for config in configs:
            started = cli("up", "-d", "-c", str(config))
            assert started.returncode == 0, started.stderr
        status = json.loads(cli("status", "--json", "-c", str(configs[0])).stdout)
        collector = next(w["pid"] for w in status if w["name"] == "collector")

        dry = cli("cleanup", "collector", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert str(collector) in dry.stdout and "would stop" in dry.stdout
        assert "'collector' is worker collector of stack analyticbot: using instance analyticbot.collector" \
            in dry.stdout
        report = json.loads(cli("cleanup", "collector", "--dry-run", "--json").stdout)
        assert report["selector"] == "instance analyticbot.collector"
        assert [p["pid"] for p in report["processes"]] == [collector]

        both = cli("cleanup", "api", "--dry-run")
        assert both.returncode == 2
        assert both.stderr.strip().endswith(
            "'api' is a worker of 2 stacks in this state directory: analyticbot.api, shop.api (give the full name)")
        assert len(both.stderr.strip().splitlines()) == 1

        typo = cli("cleanup", "colector", "--dry-run")
        assert typo.returncode == 0, typo.stderr
        assert "did you mean analyticbot.collector?" in typo.stdout and "would stop" not in typo.stdout
    finally:
        for config in configs:
            cli("down", "-c", str(config))
