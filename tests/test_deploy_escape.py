"""Hostile values cannot inject a directive into any generated file.

Each format is read back with the engine's own rules: supervisord's own
config parser and ``shlex.split`` (what it uses to start a program), JSON
for the Kubernetes manifests, and systemd's documented unquoting (C escapes
in double quotes, then ``%%`` and ``$$``) cross-checked by
``systemd-analyze verify``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.config import parse_config, worker_argv
from procguard.deploy import all_settings, local_procguard, render
from procguard.deploy.escape import (
    supervisor_command,
    supervisor_environment,
    systemd_environment,
    systemd_exec_line,
)
from procguard.errors import UsageError

HOSTILE_ARGS = [
    "it's",
    'say "hi"',
    "50%n %i %%",
    "$HOME ${PATH} $$ $",
    "a b\tc",
    "back\\slash\\",
    ";",
    "x ; y",
    "# not a comment",
    "a #b",
    "a ;b",
    "\\;",
    "'",
    '"',
    "",
    "ünïcödé ✓",
    "[Service]",
    "--name=evil",
    "%(ENV_HOME)s",
    "%(here)s",
    "x%%(here)s",
    "$(HOME)",
]
HOSTILE_WITH_NEWLINE = "line1\nExecStartPre=/bin/rm -rf /\n[program:evil]\ncommand=/bin/false"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def _hostile_config(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    command = "[" + ", ".join(_toml_string(a) for a in [sys.executable, "-c", "pass", *args]) + "]"
    env_table = "{ " + ", ".join(f"{k} = {_toml_string(v)}" for k, v in env.items()) + " }"
    return f"""
[project]
name = "evil-stack"
[workers.w]
command = {command}
env = {env_table}
health_port = 9191
[workers.f]
run = "pkg.mod:fn"
[deploy.supervisor]
log_dir = {_toml_string(str(tmp_path))}
"""


# --- systemd: a reading of systemd's rules, checked with systemd-analyze below


def _systemd_words(value: str, *, dollar: bool) -> list[str]:
    """Split a value the way systemd does: whitespace, "..." with C escapes, then %% (and $$)."""
    words: list[str] = []
    i = 0
    while i < len(value):
        if value[i] in " \t":
            i += 1
            continue
        word = []
        if value[i] == '"':
            i += 1
            while value[i] != '"':
                if value[i] == "\\":
                    nxt = value[i + 1]
                    if nxt == "x":
                        word.append(chr(int(value[i + 2 : i + 4], 16)))
                        i += 4
                        continue
                    word.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}[nxt])
                    i += 2
                    continue
                word.append(value[i])
                i += 1
            i += 1
        else:
            while i < len(value) and value[i] not in " \t":
                assert value[i] not in "\"'\\", f"unquoted special character in {value!r}"
                word.append(value[i])
                i += 1
        text = "".join(word)
        assert re.fullmatch(r"(%%|[^%])*", text), f"lone % specifier in {text!r}"
        text = text.replace("%%", "%")
        if dollar:
            assert re.fullmatch(r"(\$\$|[^$])*", text), f"lone $ in {text!r}"
            text = text.replace("$$", "$")
        words.append(text)
    return words


def test_systemd_exec_line_round_trips_hostile_words() -> None:
    argv = ["/usr/bin/prog", *HOSTILE_ARGS, HOSTILE_WITH_NEWLINE]
    line = systemd_exec_line(argv)
    assert "\n" not in line
    assert _systemd_words(line, dollar=True) == argv


def test_systemd_environment_round_trips_hostile_values() -> None:
    for value in [*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE]:
        line = systemd_environment("X", value)
        assert "\n" not in line
        assert _systemd_words(line, dollar=False) == [f"X={value}"]


def test_systemd_exec_line_needs_an_absolute_program() -> None:
    with pytest.raises(UsageError, match="absolute path"):
        systemd_exec_line(["python", "-m", "procguard"])


def test_systemd_unit_with_hostile_values_keeps_its_structure(tmp_path: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate([*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE])}
    hostile = parse_config(_hostile_config([*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE], env, tmp_path))
    benign = parse_config(_hostile_config(["plain"], {"V0": "plain"}, tmp_path))

    def directives(config_text: str) -> list[str]:
        keys = []
        for line in config_text.splitlines():
            if line and not line.startswith("#") and not line.startswith("["):
                keys.append(line.split("=", 1)[0])
            elif line.startswith("["):
                keys.append(line)
        return keys

    for config in (hostile, benign):
        (unit,) = [f for f in render("systemd", config, all_settings(config), workdir="/srv/app") if f.filename == "evil-stack-w.service"]
        exec_line = next(line for line in unit.text.splitlines() if line.startswith("ExecStart="))
        words = _systemd_words(exec_line.removeprefix("ExecStart="), dollar=True)
        assert words == worker_argv(config.workers["w"], procguard=local_procguard(None), name="w")
        env_lines = [
            line.removeprefix("Environment=")
            for line in unit.text.splitlines()
            if line.startswith("Environment=") and "PROCGUARD_STATE_DIR=%" not in line  # the deliberate specifier
        ]
        parsed = dict(_systemd_words(line, dollar=False)[0].split("=", 1) for line in env_lines)
        for key, value in config.workers["w"].env.items():
            assert parsed[key] == value
    hostile_unit = render("systemd", hostile, all_settings(hostile), workdir="/srv/app")[1].text
    benign_unit = render("systemd", benign, all_settings(benign), workdir="/srv/app")[1].text
    without_env = [k for k in directives(hostile_unit) if k != "Environment"]
    assert without_env == [k for k in directives(benign_unit) if k != "Environment"]
    assert directives(hostile_unit).count("ExecStart") == 1
    assert "ExecStartPre" not in directives(hostile_unit)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_units_with_hostile_values(tmp_path: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate([*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE])}
    config = parse_config(_hostile_config([*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE], env, tmp_path))
    out = tmp_path / "units"
    out.mkdir()
    names = []
    for record in render("systemd", config, all_settings(config), workdir="/srv/app"):
        (out / record.filename).write_text(record.text)
        names.append(f"./{record.filename}")
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        ["systemd-analyze", "verify", *names], cwd=out, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == "", result.stderr + result.stdout


def test_systemd_refuses_a_working_directory_it_cannot_express() -> None:
    config = parse_config('[workers.w]\ncommand = "x"\ncwd = "a\\nb"\n')
    with pytest.raises(UsageError, match="cwd"):
        render("systemd", config, all_settings(config), workdir="/srv/app")


# --- supervisord: read back with supervisord's own parser


def _supervisord_programs(conf: Path, tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    from supervisor.options import ServerOptions

    main = tmp_path / "supervisord.conf"
    main.write_text(
        f"[supervisord]\nlogfile={tmp_path}/sd.log\npidfile={tmp_path}/sd.pid\n"
        f"[include]\nfiles={conf}\n"
    )
    options = ServerOptions()
    options.realize(["-c", str(main)])
    programs = {}
    for group in options.process_group_configs:
        for process in group.process_configs:
            programs[process.name] = (shlex.split(process.command), dict(process.environment or {}))
    return programs


def test_supervisor_command_round_trips_through_supervisord(tmp_path: Path) -> None:
    args = [a for a in HOSTILE_ARGS]
    env = {"PLAIN": "1", "PCT": "50% %(ENV_HOME)s", "SPACES": "a b  c", "DQ": 'say "hi" now', "SQ": "it's", "DOLLAR": "$HOME"}
    config = parse_config(_hostile_config(args, env, tmp_path))
    (record,) = render("supervisor", config, all_settings(config), workdir=str(tmp_path))
    conf = tmp_path / record.filename
    conf.write_text(record.text)
    programs = _supervisord_programs(conf, tmp_path)
    assert set(programs) == {"w", "f"}
    argv, environment = programs["w"]
    assert argv == worker_argv(config.workers["w"], procguard=local_procguard(None), name="w")
    for key, value in env.items():
        assert environment[key] == value


@pytest.mark.parametrize(
    "value",
    ["line\nbreak", 'both \' and "', '"quoted at the ends"', "ends with '", "x ;comment", "x #comment", "nul\x00"],
)
def test_supervisor_refuses_env_values_it_cannot_carry(value: str) -> None:
    with pytest.raises(UsageError, match=r"^workers\.w\.env\.X: .* cannot be written for supervisord"):
        supervisor_environment({"X": value}, "workers.w")


def test_supervisor_refuses_a_newline_in_the_command() -> None:
    with pytest.raises(UsageError, match="newline"):
        supervisor_command(["/bin/prog", HOSTILE_WITH_NEWLINE], "workers.w.command")


def test_supervisor_deploy_refuses_instead_of_injecting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from procguard.cli.main import main

    path = tmp_path / "procguard.toml"
    path.write_text(_hostile_config(["ok", HOSTILE_WITH_NEWLINE], {"A": "1"}, tmp_path))
    out = tmp_path / "out"
    assert main(["deploy", "supervisor", "-c", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newline" in err and "workers.w.command: " in err and "supervisord" in err
    assert not out.exists()


# --- Kubernetes: JSON, so no structure; '$' doubled for the kubelet's $(NAME) expansion


def test_kubernetes_manifest_carries_hostile_values_exactly(tmp_path: Path) -> None:
    """The structure is JSON's; the kubelet then turns '$$' into '$' (and would expand '$(NAME)')."""
    env = {f"V{i}": value for i, value in enumerate([*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE])}
    config = parse_config(_hostile_config([*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE], env, tmp_path))
    settings = all_settings(config, {"image": "registry.example/app:1"})
    files = {f.filename: f for f in render("kubernetes", config, settings)}
    text = files["evil-stack-w.yaml"].text
    header, body = text.split("\n", 1)
    assert header.startswith("# ")
    manifest = json.loads(body)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    escaped = [value.replace("$", "$$") for value in [*HOSTILE_ARGS, HOSTILE_WITH_NEWLINE]]
    assert container["command"][-len(HOSTILE_ARGS) - 1 :] == escaped
    values = {item["name"]: item["value"] for item in container["env"]}
    for key, value in env.items():
        assert values[key] == value.replace("$", "$$")
