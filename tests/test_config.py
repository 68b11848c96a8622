"""procguard.toml: parsing into typed settings, the error table, and the worker command line."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest

from procguard.config import (
    ProjectConfig,
    StackConfig,
    WorkerConfig,
    load_config,
    parse_config,
    start_order,
    worker_argv,
)
from procguard.errors import ConfigError, UsageError
from procguard.reasons import ExitStatus
from procguard.units import MB

FULL = """
[project]
name = "shop"
status_port = 9100
log_max_bytes = "5MB"
log_backups = 2

[defaults]
max_runtime = 12          # hours
memory_limit = "1GiB"
cpu_limit = "50%"
grace = 20                # seconds
env = { SHARED = "1", OVERRIDDEN = "defaults" }

[workers.api]
command = "python -m shop.api --port 8080"
args = ["--verbose"]
health_port = 9091
env = { OVERRIDDEN = "api", PORT = 8080 }
restart = "on-failure"

[workers.collector]
run = "shop.collector:collect"
interval = 5              # minutes
max_iterations = 100
heartbeat_timeout = "15m"
drain_delay = "2s"
health_port = 9092
depends_on = ["api"]
backoff_initial = "1s"
backoff_max = "1m"
start_limit = 3
start_limit_interval = "2m"

[workers.bot]
command = ["python", "-m", "shop.bot", "--name", "a b"]
memory_limit = 0
max_runtime = 0
cpu_limit = 0
cwd = "bot"

[deploy.kubernetes]
image = "registry.example/shop:1"
"""


def test_full_config_is_parsed_into_base_units() -> None:
    config = parse_config(FULL, path="/srv/shop/procguard.toml")
    assert config.path == Path("/srv/shop/procguard.toml")
    assert config.project == ProjectConfig(
        name="shop", status_port=9100, status_host="127.0.0.1", log_max_bytes=5 * MB, log_backups=2
    )
    assert list(config.workers) == ["api", "collector", "bot"]

    api = config.workers["api"]
    assert api.command == ("python", "-m", "shop.api", "--port", "8080")
    assert api.args == ("--verbose",)
    assert api.run is None
    assert dict(api.env) == {"SHARED": "1", "OVERRIDDEN": "api", "PORT": "8080"}
    assert api.limits.max_runtime_s == 12 * 3600
    assert api.limits.memory_limit_bytes == 1024 * MB
    assert api.limits.cpu_limit_percent == 50.0
    assert api.limits.grace_s == 20.0
    assert api.restart == "on-failure"
    assert api.limits.health_port == 9091

    collector = config.workers["collector"]
    assert collector.run == "shop.collector:collect"
    assert collector.command is None
    assert collector.limits.interval_s == 300.0
    assert collector.limits.max_iterations == 100
    assert collector.limits.heartbeat_timeout_s == 900.0
    assert collector.limits.drain_delay_s == 2.0
    assert dict(collector.depends_on) == {"api": "running"}  # the list form: each waited for until running
    assert (collector.backoff_initial_s, collector.backoff_max_s) == (1.0, 60.0)
    assert (collector.start_limit, collector.start_limit_interval_s) == (3, 120.0)
    assert dict(collector.env) == {"SHARED": "1", "OVERRIDDEN": "defaults"}

    bot = config.workers["bot"]
    assert bot.command == ("python", "-m", "shop.bot", "--name", "a b")
    assert (bot.limits.memory_limit_bytes, bot.limits.max_runtime_s, bot.limits.cpu_limit_percent) == (None, None, None)
    assert bot.cwd == "bot"

    assert dict(config.deploy["kubernetes"]) == {"image": "registry.example/shop:1"}


def test_defaults_of_a_minimal_worker() -> None:
    config = parse_config('[workers.w]\nrun = "pkg.mod:fn"\n', path="/srv/My Stack!/procguard.toml")
    worker = config.workers["w"]
    assert worker == WorkerConfig(name="w", run="pkg.mod:fn")
    assert worker.limits.interval_s == 600.0
    assert worker.limits.max_runtime_s == 24 * 3600
    assert worker.limits.memory_limit_bytes == 2048 * MB
    assert worker.limits.cpu_limit_percent == 80.0
    assert worker.limits.grace_s == 30.0
    assert worker.limits.health_port is None
    assert worker.restart == "always"
    # the project name defaults to the directory, made safe for unit names
    assert config.project.name == "My-Stack"
    assert config.project.status_port == 0


def test_settings_are_immutable() -> None:
    config = parse_config(FULL)
    with pytest.raises(AttributeError):  # a frozen NamedTuple: no attribute can be set
        config.workers["api"].limits.grace_s = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.workers["api"].env["X"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.workers["new"] = config.workers["api"]  # type: ignore[index]


def test_annotations_match_parsed_values() -> None:
    """The dataclass annotations are what parse_config really produces (psutil's type-hint test idea)."""
    config = parse_config(FULL)
    for value in (*config.workers.values(), config.project):
        hints = typing.get_type_hints(type(value))
        for field in dataclasses.fields(value):
            actual = getattr(value, field.name)
            expected = hints[field.name]
            origin = typing.get_origin(expected)
            if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
                options = typing.get_args(expected)
            else:
                options = (expected,)
            ok = False
            for option in options:
                base = typing.get_origin(option) or option
                if (option is type(None) and actual is None) or (base is typing.Literal and actual in typing.get_args(option)):
                    ok = True
                elif isinstance(base, type) and base is not type(None):
                    try:
                        ok = ok or isinstance(actual, base)
                    except TypeError:
                        ok = True
            assert ok, f"{type(value).__name__}.{field.name} = {actual!r} does not match {expected}"


BAD = [
    # (toml, key named in the message, a fragment of what is accepted)
    ("[workers.a]\nrun = 'm:f'\nbogus = 1\n", "workers.a.bogus", "use one of"),
    ("[project]\nname = 'x'\ncolour = 'red'\n[workers.a]\nrun = 'm:f'\n", "project.colour", "use one of"),
    ("[extra]\n[workers.a]\nrun = 'm:f'\n", "extra", "use one of: project, defaults, workers, deploy"),
    ("[workers.a]\nrun = 'm:f'\ncommand = 'x'\n", "workers.a", "exactly one"),
    ("[workers.a]\ninterval = 5\n", "workers.a", "exactly one"),
    ("[workers.a]\nrun = 'not a target'\n", "workers.a.run", "package.module:function"),
    ("[workers.a]\ncommand = ''\n", "workers.a.command", "program"),
    ("[workers.a]\ncommand = 'echo \"unclosed'\n", "workers.a.command", "split"),
    ("[workers.a]\ncommand = [1, 2]\n", "workers.a.command", "list of strings"),
    ("[workers.a]\nrun = 'm:f'\ninterval = '10 fortnights'\n", "workers.a.interval", "duration"),
    ("[workers.a]\nrun = 'm:f'\nmemory_limit = '12XB'\n", "workers.a.memory_limit", "512MB"),
    ("[workers.a]\nrun = 'm:f'\nmemory_limit = -5\n", "workers.a.memory_limit", "zero or positive"),
    ("[workers.a]\nrun = 'm:f'\ncpu_limit = 100000\n", "workers.a.cpu_limit", "from 0 to"),
    ("[workers.a]\nrun = 'm:f'\ngrace = 0\n", "workers.a.grace", "greater than zero"),
    ("[workers.a]\nrun = 'm:f'\nhealth_port = 70000\n", "workers.a.health_port", "0 to 65535"),
    ("[workers.a]\nrun = 'm:f'\nhealth_port = 'http'\n", "workers.a.health_port", "0 to 65535"),
    ("[workers.a]\nrun = 'm:f'\nhealth_host = '0.0.0.0 --evil'\n", "workers.a.health_host", "is not an IP address"),
    ("[workers.a]\nrun = 'm:f'\nrestart = 'sometimes'\n", "workers.a.restart", "always, on-failure, never"),
    ("[workers.a]\nrun = 'm:f'\nstart_limit = -1\n", "workers.a.start_limit", "0 or more"),
    ("[workers.a]\nrun = 'm:f'\nmax_iterations = 1.5\n", "workers.a.max_iterations", "whole number"),
    ("[workers.a]\ncommand = 'x'\nenv_file = []\n", "workers.a.env_file", "list of paths"),
    ("[workers.a]\ncommand = 'x'\nenv_file = 3\n", "workers.a.env_file", "list of paths"),
    ("[workers.a]\ncommand = 'x'\ndepends_on = { b = 'up' }\n[workers.b]\ncommand = 'y'\n",
     "workers.a.depends_on.b", '"running" or "ready"'),
    ("[workers.a]\ncommand = 'x'\ndepends_on = { c = 'running' }\n", "workers.a.depends_on", "another worker"),
    ("[workers.a]\ncommand = 'x'\nuser = 'root; rm'\n", "workers.a.user", "is not a user or group"),
    ("[workers.a]\ncommand = 'x'\ngroup = -1\n", "workers.a.group", "string"),
    ("[workers.a]\ncommand = 'x'\numask = '0o1000'\n", "workers.a.umask", "is not a umask"),
    ("[workers.a]\ncommand = 'x'\numask = 512\n", "workers.a.umask", "is not a umask"),
    ("[workers.a]\ncommand = 'x'\nstop_signal = 'SIGSTOP'\n", "workers.a.stop_signal", "cannot be caught"),
    ("[workers.a]\ncommand = 'x'\nruntime_jitter = -1\n", "workers.a.runtime_jitter", "zero or positive"),
    ("[workers.a]\ncommand = 'x'\niterations_jitter = 3\n", "workers.a.iterations_jitter", "run workers only"),
    ("[workers.a]\nrun = 'm:f'\ngrace = true\n", "workers.a.grace", "duration"),
    ("[workers.a]\nrun = 'm:f'\nenv = 'X=1'\n", "workers.a.env", "table"),
    ("[workers.a]\nrun = 'm:f'\nenv = { 'BAD NAME' = '1' }\n", "workers.a.env.BAD NAME", "variable name"),
    ("[workers.a]\nrun = 'm:f'\nenv = { X = [1] }\n", "workers.a.env.X", "string or number"),
    ("[workers.a]\nrun = 'm:f'\nargs = ['--x']\n", "workers.a.args", "command workers only"),
    ("[workers.a]\ncommand = 'x'\nmax_iterations = 3\n", "workers.a.max_iterations", "run workers only"),
    ("[workers.a]\nrun = 'm:f'\nbackoff_initial = '10s'\nbackoff_max = '1s'\n", "workers.a.backoff_max", "larger"),
    ("[workers.'a b']\nrun = 'm:f'\n", "workers.a b", "letters, digits"),
    ("[workers.'../etc']\nrun = 'm:f'\n", "workers.../etc", "letters, digits"),
    ("[workers.'a%n']\nrun = 'm:f'\n", "workers.a%n", "letters, digits"),
    ("[workers.x]\nrun = 'm:f'\n[project]\nname = 'my project'\n", "project.name", "letters, digits"),
    ("[workers.a]\nrun = 'm:f'\nhealth_port = 9091\n[workers.b]\nrun = 'm:f'\nhealth_port = 9091\n",
     "workers.b.health_port", "already used by workers.a.health_port"),
    ("[project]\nstatus_port = 9091\n[workers.a]\nrun = 'm:f'\nhealth_port = 9091\n",
     "workers.a.health_port", "already used by project.status_port"),
    ("[workers.a]\nrun = 'm:f'\ndepends_on = ['ghost']\n", "workers.a.depends_on", "another worker"),
    ("[workers.a]\nrun = 'm:f'\ndepends_on = ['b']\n[workers.b]\nrun = 'm:f'\ndepends_on = ['a']\n",
     "workers.a.depends_on", "cycle a -> b -> a"),
    ("[workers]\n", "workers", "no workers"),
    ("", "workers", "no workers"),
    ("[workers.a]\nrun = 'm:f'\n[deploy.docker]\n", "deploy.docker", "systemd, supervisor, kubernetes"),
    ("[workers.a\nrun = 'm:f'\n", "", "not valid TOML"),
    ("[defaults]\ngrace = 'soon'\n[workers.a]\nrun = 'm:f'\n", "defaults.grace", "duration"),
]


@pytest.mark.parametrize(("text", "key", "accepted"), BAD, ids=[f"{i}:{b[1]}" for i, b in enumerate(BAD)])
def test_config_error_table(text: str, key: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="stack/procguard.toml")
    message = str(info.value)
    assert message.startswith("stack/procguard.toml: "), message
    assert f": {key}: " in message or not key, message
    assert accepted in message, message
    assert "\n" not in message
    assert info.value.exit_status == ExitStatus.USAGE
    assert info.value.path == "stack/procguard.toml"


def test_load_config_reads_the_file_and_names_a_missing_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "procguard.toml").write_text('[workers.w]\ncommand = "sleep 1"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.path == tmp_path / "procguard.toml"
    assert config.project.name == tmp_path.name.replace("_", "_")
    assert load_config(tmp_path / "procguard.toml").workers["w"].command == ("sleep", "1")

    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "procguard.toml").unlink()
    with pytest.raises(ConfigError, match=r"procguard\.toml: no such file \(pass -c FILE"):
        load_config()
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[workers]")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "bin.toml")


def test_worker_argv_function_mode() -> None:
    config = parse_config(FULL)
    argv = worker_argv(config.workers["collector"], procguard=["/opt/venv/bin/procguard"])
    assert argv == [
        "/opt/venv/bin/procguard", "run", "shop.collector:collect", "--name", "collector",
        "--interval", "5m", "--max-runtime", "12h", "--max-iterations", "100",
        "--memory-limit", "1024MB", "--memory-strikes", "3", "--cpu-limit", "50", "--cpu-window", "1m",
        "--grace", "20s", "--drain-delay", "2s", "--heartbeat-timeout", "15m", "--max-failures", "5",
        "--health-port", "9092", "--health-host", "127.0.0.1",
    ]


def test_worker_argv_command_mode_keeps_the_command_verbatim() -> None:
    config = parse_config(FULL)
    argv = worker_argv(config.workers["bot"], procguard=["py", "-m", "procguard"], name="shop.bot")
    assert argv == [
        "py", "-m", "procguard", "run", "--name", "shop.bot",
        "--max-runtime", "0", "--memory-limit", "0", "--memory-strikes", "3", "--cpu-limit", "0",
        "--cpu-window", "1m", "--grace", "20s", "--drain-delay", "0s", "--health-port", "0",
        "--", "python", "-m", "shop.bot", "--name", "a b",
    ]
    api = worker_argv(config.workers["api"], procguard=["procguard"], health_host="0.0.0.0")
    assert api[-7:] == ["--", "python", "-m", "shop.api", "--port", "8080", "--verbose"]
    assert api[api.index("--health-host") + 1] == "0.0.0.0"


def test_worker_argv_is_accepted_by_procguard_run() -> None:
    """The flags worker_argv writes are the ones `procguard run` parses, into the same settings."""
    from procguard.cli.main import build_parser
    from procguard.runner.options import options_from_args

    config = parse_config(
        FULL + '\n[workers.frac]\nrun = "m:f"\ninterval = "1.5s"\nmemory_limit = "1000000B"\n'
        'drain_delay = "0.25s"\nheartbeat_timeout = "2.5s"\nmemory_strikes = 7\ncpu_window = "12.5s"\n'
        '\n[workers.cmd]\ncommand = "prog"\ndrain_delay = "3s"\n'
    )
    parser, _module = build_parser("run")
    for worker in config.workers.values():
        argv = worker_argv(worker, procguard=[])
        options = options_from_args(parser.parse_args(argv[1:]))
        assert options.name == worker.name
        assert options.mode == ("function" if worker.run else "command")
        assert options.target == worker.run
        assert options.command == (*(worker.command or ()), *worker.args)
        if worker.run:
            assert options.limits == worker.limits
        else:  # a command's loop-only settings are not its business: the defaults stay
            assert options.limits.with_changes(
                interval_s=worker.limits.interval_s,
                max_iterations=worker.limits.max_iterations,
                heartbeat_timeout_s=worker.limits.heartbeat_timeout_s,
                max_failures=worker.limits.max_failures,
            ) == worker.limits


def test_loop_settings_of_defaults_do_not_reach_a_command() -> None:
    config = parse_config(
        "[defaults]\nheartbeat_timeout = '5s'\nmax_iterations = 3\n"
        "[workers.f]\nrun = 'm:f'\n[workers.c]\ncommand = 'prog'\n"
    )
    assert config.workers["f"].limits.heartbeat_timeout_s == 5.0
    assert config.workers["f"].limits.max_iterations == 3
    assert config.workers["c"].limits.heartbeat_timeout_s == 60.0  # the default, untouched
    assert config.workers["c"].limits.max_iterations is None


def test_start_order_puts_dependencies_first() -> None:
    text = """
[workers.web]
command = "w"
depends_on = ["db", "cache"]
[workers.cache]
command = "c"
depends_on = ["db"]
[workers.db]
command = "d"
[workers.solo]
command = "s"
"""
    config = parse_config(text)
    assert start_order(config) == ["db", "cache", "web", "solo"]
    assert start_order(config, ["cache"]) == ["db", "cache"]
    with pytest.raises(UsageError, match=r"unknown worker 'nope' \(use one of: web, cache, db, solo\)"):
        start_order(config, ["nope"])


def test_cpu_limit_accepts_up_to_all_cores() -> None:
    cores = os.cpu_count() or 1
    config = parse_config(f"[workers.w]\nrun = 'm:f'\ncpu_limit = {100 * cores}\n")
    assert config.workers["w"].limits.cpu_limit_percent == 100.0 * cores


def test_stack_config_type() -> None:
    assert isinstance(parse_config(FULL), StackConfig)


def test_every_setting_is_declared_once_and_documented() -> None:
    """Each field has exactly one TOML key, lifecycle keys come from procguard.limits, and the docs
    show today's tables (``make docs`` rewrites them)."""
    from procguard.config import LIFECYCLE_KEYS, PROJECT_KEYS, WORKER_KEYS
    from procguard.limits import SETTINGS, WorkerLimits

    from .doc_tables import DOCS, TABLES, section

    stack_fields = {f.name for f in dataclasses.fields(WorkerConfig)} - {"name", "limits"}
    stack_keys = {key: spec for key, spec in WORKER_KEYS.items() if key not in LIFECYCLE_KEYS}
    assert sorted(spec.field for spec in stack_keys.values()) == sorted(stack_fields)
    assert {spec.field for spec in LIFECYCLE_KEYS.values()} == {s.field for s in SETTINGS if s.toml}
    assert [s.field for s in SETTINGS] == list(WorkerLimits._fields)
    assert sorted(spec.field for spec in PROJECT_KEYS.values()) == sorted(f.name for f in dataclasses.fields(ProjectConfig))
    for page, marker, generate in TABLES:
        assert section((DOCS / page).read_text(), marker) == generate(), f"{page} drifted: run make docs"


def test_keys_users_of_other_supervisors_expect(tmp_path: Path) -> None:
    """env_file (several, later wins, env wins over all), depends_on as a table, user/group/umask, stop_signal."""
    import signal

    (tmp_path / "base.env").write_text("A=base\nB=base\nC=base\n")
    (tmp_path / "local.env").write_text("B=local\nC=local\n")
    (tmp_path / "procguard.toml").write_text(
        '[defaults]\nenv_file = "base.env"\numask = "0o027"\n'
        '[workers.api]\ncommand = "x"\nhealth_port = 0\n'
        '[workers.web]\ncommand = "y"\nenv_file = ["base.env", "local.env"]\nenv = { C = "env" }\n'
        'depends_on = { api = "running" }\nuser = 1000\ngroup = "staff"\numask = 0o077\nstop_signal = "sigquit"\n'
    )
    config = load_config(tmp_path / "procguard.toml")
    api, web = config.workers["api"], config.workers["web"]
    assert dict(api.env) == {"A": "base", "B": "base", "C": "base"} and api.umask == 0o027
    assert dict(web.env) == {"A": "base", "B": "local", "C": "env"}
    assert dict(web.depends_on) == {"api": "running"} and not web.waits_for_ready("api")
    assert (web.user, web.group, web.umask) == ("1000", "staff", 0o077)
    assert web.limits.stop_signal == signal.SIGQUIT and api.limits.stop_signal == signal.SIGTERM
    assert api.limits.runtime_jitter_s == 0.0 and api.limits.iterations_jitter == 0
