"""``add_lifecycle_arguments``: the seed's worker flags in a worker's own argparse CLI."""

from __future__ import annotations

import argparse
import os

import pytest

from procguard.lifecycle_args import add_lifecycle_arguments, limits_from_args
from procguard.limits import SETTINGS, WorkerLimits
from procguard.manager import ProcessManager

SEED_LINE = "--interval 10 --max-runtime 24 --memory-limit 2048 --cpu-limit 80 --health-port 9091 --user-id 123 --once"


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="myapp.worker")
    add_lifecycle_arguments(parser)
    parser.add_argument("--user-id", type=int)
    return parser


def test_the_seed_command_line_parses_in_the_seeds_units():
    args = worker_parser().parse_args(SEED_LINE.split())
    assert args.interval_s == 600.0
    assert args.max_runtime_s == 24 * 3600
    assert args.memory_limit_bytes == 2048 * 1024 * 1024
    assert args.cpu_limit_percent == 80.0
    assert args.health_port == 9091
    assert args.user_id == 123
    assert args.once is True


def test_defaults_are_those_of_the_design():
    args = worker_parser().parse_args([])
    assert args.interval_s == 600.0
    assert args.max_runtime_s == 24 * 3600
    assert args.max_iterations is None
    assert args.memory_limit_bytes == 2048 * 1024 * 1024
    assert args.cpu_limit_percent == 80.0
    assert args.health_port == 9091
    assert args.health_host == "127.0.0.1"
    assert args.grace_s == 30.0
    assert args.drain_delay_s == 0.0
    assert args.once is False and args.replace is False and args.name is None


@pytest.mark.parametrize(
    ("flag", "value", "attr", "expected"),
    [
        ("--interval", "90s", "interval_s", 90.0),
        ("--interval", "0", "interval_s", 0.0),
        ("--interval", "1.5", "interval_s", 90.0),
        ("--max-runtime", "30m", "max_runtime_s", 1800.0),
        ("--max-runtime", "0", "max_runtime_s", None),
        ("--memory-limit", "512MB", "memory_limit_bytes", 512 * 1024 * 1024),
        ("--memory-limit", "2GiB", "memory_limit_bytes", 2 * 1024**3),
        ("--cpu-limit", "150", "cpu_limit_percent", 150.0 if (os.cpu_count() or 1) >= 2 else None),
        ("--cpu-limit", "50%", "cpu_limit_percent", 50.0),
        ("--grace", "2m", "grace_s", 120.0),
        ("--grace", "5", "grace_s", 5.0),
        ("--drain-delay", "5", "drain_delay_s", 5.0),
        ("--drain-delay", "1.5m", "drain_delay_s", 90.0),
        ("--drain-delay", "0", "drain_delay_s", 0.0),
        ("--max-iterations", "0", "max_iterations", None),
        ("--health-host", "localhost", "health_host", "127.0.0.1"),
        ("--health-host", "::1", "health_host", "::1"),
    ],
)
def test_suffixes_and_bare_numbers(flag, value, attr, expected):
    if expected is None and attr == "cpu_limit_percent" and (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs")
    args = worker_parser().parse_args([flag, value])
    assert getattr(args, attr) == expected


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--interval", "soon"),
        ("--max-runtime", "-1"),
        ("--memory-limit", "12XB"),
        ("--cpu-limit", str(100 * (os.cpu_count() or 1) + 1)),
        ("--health-port", "65536"),
        ("--health-host", "example.com"),
        ("--max-iterations", "many"),
        ("--name", "two words"),
        ("--drain-delay", "5x"),
        ("--drain-delay", "a while"),
    ],
)
def test_bad_values_are_reported_by_argparse_as_one_error_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        worker_parser().parse_args([flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    assert flag in error_lines[0] and repr(value) in error_lines[0]


def test_the_seed_line_gives_one_limits_value():
    limits = limits_from_args(worker_parser().parse_args(SEED_LINE.split()))
    assert limits == WorkerLimits(
        interval_s=600.0, max_runtime_s=24 * 3600.0, memory_limit_bytes=2048 * 1024 * 1024,
        cpu_limit_percent=80.0, health_port=9091,
    )


def test_zero_means_no_limit_and_no_server():
    args = worker_parser().parse_args(
        ["--max-runtime", "0", "--memory-limit", "0", "--cpu-limit", "0", "--health-port", "0"]
    )
    limits = limits_from_args(args)
    assert limits.max_runtime_s is None
    assert limits.memory_limit_bytes is None
    assert limits.cpu_limit_percent is None
    assert limits.health_port is None


def test_process_manager_from_args_builds_the_limits():
    args = worker_parser().parse_args(
        ["--max-runtime", "90m", "--memory-limit", "1GiB", "--cpu-limit", "50", "--max-iterations", "7",
         "--grace", "12s", "--health-port", "0", "--name", "w1"]
    )
    manager = ProcessManager.from_args(args, max_consecutive_failures=4)
    assert manager.name == "w1"
    lim = manager.limits
    assert lim.max_runtime_s == 5400
    assert lim.memory_limit_bytes == 1024**3
    assert lim.cpu_limit_percent == 50
    assert lim.max_iterations == 7
    assert lim.grace_s == 12
    assert lim.health_port is None
    assert lim.max_failures == 4


def test_flags_can_go_into_an_existing_group():
    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("worker")
    add_lifecycle_arguments(group)
    assert parser.parse_args(["--interval", "5m"]).interval_s == 300.0


def test_drain_delay_and_grace_reach_the_manager_as_they_are():
    """--grace is the stop after the drain; the manager's stop budget is both."""
    args = worker_parser().parse_args(["--drain-delay", "5s", "--grace", "10s", "--health-port", "0"])
    manager = ProcessManager.from_args(args)
    assert manager.limits.drain_delay_s == 5.0 and manager.limits.grace_s == 10.0
    assert manager.limits.stop_budget_s == 15.0


def test_worker_flags_are_the_settings_declared_for_workers():
    parser = worker_parser()
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings}
    declared = {s.flag for s in SETTINGS if s.flag_scope == "worker"}
    assert declared <= flags
    assert not {s.flag for s in SETTINGS if s.flag_scope != "worker"} & flags  # runner-only flags stay out
    assert {"--once", "--name", "--replace"} <= flags
