"""The pure part of ``procguard run``: the command line split, mode, defaults and names."""

from __future__ import annotations

import pytest

from procguard.cli.main import build_parser
from procguard.errors import UsageError
from procguard.limits import WorkerLimits
from procguard.runner.function import load_target, wants_manager
from procguard.runner.options import derive_name, options_from_args


def parse(*argv: str):
    parser, _module = build_parser("run")
    return options_from_args(parser.parse_args(list(argv)))


def test_function_mode_with_defaults():
    opts = parse("pkg.mod:work")
    assert opts.mode == "function" and opts.target == "pkg.mod:work" and opts.command == ()
    assert opts.name == "pkg.mod.work"
    lim = opts.limits
    assert lim.interval_s == 600 and lim.max_runtime_s == 86400
    assert lim.memory_limit_bytes == 2048 * 1024 * 1024 and lim.cpu_limit_percent == 80
    assert lim.health_port == 9091 and lim.grace_s == 30
    assert lim.max_failures == 5 and lim.memory_strikes == 3 and lim.heartbeat_timeout_s == 60


def test_everything_after_the_double_dash_is_the_command():
    opts = parse("--grace", "5s", "--", "python", "-m", "worker", "--once", "--", "x")
    assert opts.mode == "command"
    assert opts.command == ("python", "-m", "worker", "--once", "--", "x")
    assert opts.once is False  # the command's --once is not ours
    assert opts.name == "worker"


def test_a_command_that_looks_like_a_target_is_still_a_command():
    assert parse("--", "a:b").mode == "command"


def test_zero_means_no_limit():
    opts = parse("--max-runtime", "0", "--memory-limit", "0", "--cpu-limit", "0", "--health-port", "0",
                 "--max-failures", "0", "pkg:f")
    lim = opts.limits
    assert lim.max_runtime_s is None and lim.memory_limit_bytes is None
    assert lim.cpu_limit_percent is None and lim.health_port is None and lim.max_failures is None


def test_settings_handed_over_are_the_base_and_given_flags_win():
    """Under procguard up the runner's settings come as a value; a flag given on top overrides one."""
    parser, _module = build_parser("run")
    handed = WorkerLimits(memory_limit_bytes=512 * 1024 * 1024, grace_s=7.0, health_port=None)
    opts = options_from_args(parser.parse_args(["pkg:f", "--grace", "9s"]), base=handed)
    assert opts.limits == handed.with_changes(grace_s=9.0)
    assert opts.limits.health_port is None  # not the command line's 9091: the handed value


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (("python3", "-m", "examples.analyticbot.bot", "--every", "5"), "examples.analyticbot.bot"),
        (("python", "scripts/sync.py"), "sync"),
        (("python", "-c", "print(1)"), "python"),
        (("./run.sh",), "run"),
        (("/usr/bin/sleep", "60"), "sleep"),
    ],
)
def test_default_names_of_commands(argv, name):
    assert derive_name(None, argv) == name


def test_wants_manager():
    def no_args() -> None: ...
    def takes_one(m) -> None: ...
    def optional(x=1) -> None: ...
    def named(manager=None) -> None: ...

    assert not wants_manager(no_args)
    assert wants_manager(takes_one)
    assert not wants_manager(optional)
    assert wants_manager(named)


def test_load_target_names_what_is_wrong():
    assert load_target("os:getpid")() > 0
    with pytest.raises(UsageError, match="no attribute"):
        load_target("os:nope")
    with pytest.raises(UsageError, match="cannot import"):
        load_target("no_such_pkg_xyz.mod:f")
