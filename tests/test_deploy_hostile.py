"""Hostile values through every generator, read back by the real engines.

One stack whose worker carries hostile values in its arguments, its
environment and its working directory (quotes of both kinds, backslashes,
``%``, ``%(here)s``, ``$``, ``;``, ``#``, unicode, newlines, a leading
``-``, empty and very long strings), plus the edgiest names procguard.toml
accepts, rendered by ``procguard deploy`` and then:

- supervisord: a real run. Each program is a script that writes the argv and
  environment it received to a file; they must be exactly the configured ones.
- systemd: ``systemd-analyze verify`` is silent, and systemd itself
  (``systemd --test``, which loads the units and dumps what it parsed, run as
  an unprivileged user since it refuses root) shows exactly the configured
  ExecStart words, Environment entries and WorkingDirectory.
- Kubernetes: ``kubernetes-validate --strict`` passes; read back with a YAML
  reader and the kubelet's ``$(NAME)`` expansion, the command and env are
  exactly the configured ones, and nothing in the file trips Go's YAML
  reader (surrogate-pair escapes, raw control characters).

A value an engine cannot carry is refused by ``deploy``: exit 2, one line
naming the worker, the key and the engine, nothing written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procguard.config import load_config, worker_argv
from procguard.deploy import local_procguard

from .conftest import Spawn
from .helpers import GLOBAL_TIMEOUT, PROCGUARD, python_env, read_output, wait_for

#: Mixed hostile characters, long: 100,000 characters (under Linux's 128 KiB per argument).
LONG_ARG = ("'\"%(here)s %% $X ${Y} $(Z) ;# \\ ü😀 " * 4000)[:100_000]
LONG_ENV = ("%(ENV_HOME)s$HOME;#,=ü\\" * 3000)[:50_000]

#: Values every engine can carry (in arguments; supervisord refuses some as env values, see below).
HOSTILE = [
    "it's", 'say "hi"', "both ' and \" kinds", "'", '"', "back\\slash\\", "\\;", "\\",
    "%", "%%", "50%n %i %%", "%(here)s", "x%(here)sy%%(here)s", "%(ENV_HOME)s", "%(program_name)s",
    "$HOME", "${X}", "$$", "$", "$(HOME)", "$$(HOME)", "a$",
    "a b  c", " lead and trail ", "\ttab", ";", "x ;y", "#", "x #y", "a;b#c",
    "=", "A=B", ",", "a,b", "[Service]", "ExecStartPre=/bin/false",
    "ünïcödé ✓ 😀", "\u00a0nbsp\u2028ls\x85nel\u200bzw",
    "-n", "--name=evil", "-", "", LONG_ARG, LONG_ENV,
]  # fmt: skip
#: What supervisord's INI cannot carry at all; systemd and Kubernetes can.
CONTROL = ["line1\nExecStartPre=/bin/false\n[program:evil]\ncommand=/bin/false", "\x1b[31mred", "cr\rlf", "\x01"]
#: Env values supervisord cannot carry (its environment= has no escapes), with the reason it gives.
SUPERVISORD_ENV_REFUSED = [
    ("both-quote-kinds", "both ' and \" kinds", "quotes of both kinds"),
    ("single-quote", "'", "starts or ends with a quote"),
    ("double-quote", '"', "starts or ends with a quote"),
    ("ends-with-quote", 'say "hi"', "starts or ends with a quote"),
    ("long-with-quotes", LONG_ARG, "starts or ends with a quote"),
    ("space-semicolon", "x ;y", "starts a comment"),
    ("space-hash", "x #y", "starts a comment"),
    ("here", "%(here)s", "replaces %(here)s"),
    ("here-escaped", "x%(here)sy%%(here)s", "replaces %(here)s"),
]
SUPERVISORD_ENV = [v for v in HOSTILE if v not in {value for _id, value, _why in SUPERVISORD_ENV_REFUSED}]

#: Names at the edge of what procguard.toml accepts: a leading digit, '-' and '_', 63 characters.
EDGE_NAME = "9_Edge-name_"
LONG_NAME = "n" + "-_x" * 20 + "yz"

DUMP = """
import json, os, sys, time
out = sys.argv[1]
with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd()}, f)
os.replace(out + ".tmp", out)
time.sleep(3600)
"""


def _toml(value: str) -> str:
    """A TOML basic string: JSON's, with non-ASCII raw (TOML has no surrogate-pair escapes) and DEL escaped."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _env(values: list[str]) -> dict[str, str]:
    env = {f"V{i}": value for i, value in enumerate(values)}
    env["_"] = "underscore"
    env["lower_case1"] = "$(V0)"
    return env


def _stack(tmp: Path, args: list[str], env: dict[str, str], *, extra: str = "") -> Path:
    """The hostile stack in ``tmp``: worker ``w`` with the hostile values, two edge-named workers."""
    (tmp / "dump.py").write_text(DUMP)
    (tmp / "out").mkdir(exist_ok=True)
    (tmp / "work %dir").mkdir(exist_ok=True)
    (tmp / "log%dir").mkdir(exist_ok=True)

    def command(out: str, words: list[str]) -> str:
        argv = [sys.executable, str(tmp / "dump.py"), str(tmp / "out" / out), *words]
        return "[" + ", ".join(_toml(word) for word in argv) + "]"

    env_table = "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in env.items()) + " }"
    config = tmp / "procguard.toml"
    config.write_text(
        f"""
[project]
name = "evil-stack"

[defaults]
grace = "2s"
restart = "never"
cpu_limit = 0

[workers.w]
command = {command("w.json", args)}
env = {env_table}
cwd = "work %dir"

[workers.{EDGE_NAME}]
command = {command("edge.json", ["%(here)s", "-"])}

[workers.{LONG_NAME}]
command = {command("long.json", [])}

[deploy.supervisor]
log_dir = {_toml(str(tmp / "log%dir"))}
startsecs = 1
{extra}"""
    )
    return config


def _deploy(target: str, config: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROCGUARD, "deploy", target, "-c", str(config), "-o", str(out), *flags],
        capture_output=True, text=True, env=python_env(), timeout=120, check=False,
    )  # fmt: skip


def _expected_argv(config: Path, worker: str, procguard: list[str]) -> list[str]:
    stack = load_config(config)
    return worker_argv(stack.workers[worker], procguard=procguard, name=worker)


# --- supervisord: a real run ---------------------------------------------------

SUPERVISORD = Path(sys.executable).parent / "supervisord"


def _supervisord_conf(tmp: Path, include: Path) -> Path:
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"[supervisord]\nnodaemon=true\nlogfile={tmp}/supervisord.log\npidfile={tmp}/supervisord.pid\n"
        f"childlogdir={tmp}\nloglevel=info\n"
        f"[include]\nfiles={include}\n"
    )
    return conf


@pytest.mark.slow
@pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisor is not installed in this environment")
def test_supervisord_runs_programs_with_exactly_the_configured_argv_and_environment(
    tmp_path: Path, spawn: Spawn, state_dir: Path
) -> None:
    env = _env(SUPERVISORD_ENV)
    config = _stack(tmp_path, HOSTILE, env)
    result = _deploy("supervisor", config, tmp_path / "deploy")
    assert result.returncode == 0, result.stderr
    conf = _supervisord_conf(tmp_path, tmp_path / "deploy" / "evil-stack.conf")
    proc = spawn([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), cwd=str(tmp_path))

    def dumped(name: str) -> Callable[[], dict[str, object] | None]:
        path = tmp_path / "out" / name

        def read() -> dict[str, object] | None:
            if proc.poll() is not None:
                raise AssertionError(f"supervisord exited {proc.returncode}:\n{read_output(proc)}")
            return json.loads(path.read_text()) if path.exists() else None

        return read

    log = tmp_path / "supervisord.log"
    got = wait_for(dumped("w.json"), timeout=GLOBAL_TIMEOUT * 2, message=lambda: f"w.json; log:\n{log.read_text()}")
    assert got["argv"] == HOSTILE
    for key, value in env.items():
        assert got["env"][key] == value, key  # type: ignore[index]
    assert got["cwd"] == str(tmp_path / "work %dir")
    edge = wait_for(dumped("edge.json"), message="edge.json")
    assert edge["argv"] == ["%(here)s", "-"]
    wait_for(dumped("long.json"), message="long.json")
    # the logs went to the log directory whose name holds a '%' (expanded twice by supervisord)
    assert (tmp_path / "log%dir" / "evil-stack-w.out.log").exists()
    # supervisord started each program from the exact argv procguard rendered
    runner = _runner_cmdline(proc.pid, "--name", "w")
    assert runner == _expected_argv(config, "w", local_procguard(None))

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=GLOBAL_TIMEOUT * 2)


def _runner_cmdline(supervisord_pid: int, flag: str, name: str) -> list[str]:
    import psutil

    for child in psutil.Process(supervisord_pid).children():
        cmdline = child.cmdline()
        if flag in cmdline and cmdline[cmdline.index(flag) + 1] == name:
            return cmdline
    raise AssertionError(f"no runner of {name} under supervisord")


@pytest.mark.parametrize(
    ("value", "reason"), [row[1:] for row in SUPERVISORD_ENV_REFUSED], ids=[row[0] for row in SUPERVISORD_ENV_REFUSED]
)
def test_supervisord_refuses_an_env_value_it_would_misread(tmp_path: Path, value: str, reason: str) -> None:
    config = _stack(tmp_path, [], {"X": value})
    result = _deploy("supervisor", config, tmp_path / "deploy")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "workers.w.env.X: " in result.stderr and "cannot be written for supervisord" in result.stderr
    assert reason in result.stderr
    assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("value", CONTROL, ids=["newline", "escape", "carriage-return", "control"])
def test_supervisord_refuses_control_characters_in_arguments_and_env(tmp_path: Path, value: str) -> None:
    for args, env, key in (([value], {"A": "1"}, "workers.w.command"), ([], {"X": value}, "workers.w.env.X")):
        config = _stack(tmp_path, args, env)
        result = _deploy("supervisor", config, tmp_path / "deploy")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"{key}: " in result.stderr and "supervisord" in result.stderr and "newline or control" in result.stderr
        assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("key", ["workers.w.cwd", "deploy.supervisor.log_dir"])
def test_supervisord_refuses_here_in_plain_values(tmp_path: Path, key: str) -> None:
    config = _stack(tmp_path, [], {"A": "1"})
    text = config.read_text()
    if key.endswith("cwd"):
        text = text.replace('cwd = "work %dir"', 'cwd = "work%(here)s"')
    else:
        text = text.replace("log%dir", "log%(here)s")
    config.write_text(text)
    result = _deploy("supervisor", config, tmp_path / "deploy")
    assert result.returncode == 2, result.stderr
    assert f"{key}: " in result.stderr and "%(here)s" in result.stderr and result.stderr.count("\n") == 1


# --- systemd: verify, then what systemd itself parsed -----------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMD = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None)
SETPRIV = shutil.which("setpriv")
NOBODY = 65534


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an unprivileged user can read (pytest's tmp_path is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="procguard-units-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _systemd_dump(units: Path, unit: str, runtime: Path) -> str:
    """What systemd parsed from the units in ``units``: ``systemd --test --user`` loads them and dumps its state.

    systemd refuses test mode as root, so as root it runs as nobody.
    """
    runtime.mkdir(mode=0o700)
    argv = [SYSTEMD or "systemd", "--test", "--user", f"--unit={unit}", "--no-pager", "--log-target=console"]
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("systemd --test refuses root and setpriv is not installed")
        os.chown(runtime, NOBODY, NOBODY)
        argv = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(runtime),
        "XDG_RUNTIME_DIR": str(runtime),
        "SYSTEMD_UNIT_PATH": f"{units}:",  # ours first, then the defaults (basic.target...)
    }
    result = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode("utf-8")


def _unit_block(dump: str, unit: str) -> str:
    start = dump.index(f"\t-> Unit {unit}:\n")
    end = dump.find("\n\t-> Unit ", start + 1)
    return dump[start : end if end != -1 else len(dump)]


_DUMP_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11}


def _dump_words(line: str) -> list[str]:
    """The words of a dumped ``Command Line:``: systemd writes each as is, or in "..." with C escapes."""
    data = line.encode("utf-8")
    words: list[str] = []
    i = 0
    while i < len(data):
        if data[i] == 0x20:
            i += 1
            continue
        word = bytearray()
        if data[i] == 0x22:  # "
            i += 1
            while data[i] != 0x22:
                if data[i] == 0x5C:  # backslash
                    nxt = chr(data[i + 1])
                    if nxt in "01234567":
                        word.append(int(data[i + 1 : i + 4], 8))
                        i += 4
                    elif nxt == "x":
                        word.append(int(data[i + 2 : i + 4], 16))
                        i += 4
                    else:
                        word.append(_DUMP_ESCAPES.get(nxt, ord(nxt)))
                        i += 2
                    continue
                word.append(data[i])
                i += 1
            i += 1
        else:
            while i < len(data) and data[i] != 0x20:
                word.append(data[i])
                i += 1
        words.append(word.decode("utf-8"))
    return words


def _exec_time(word: str) -> str:
    """What systemd passes at exec time: ``$$`` is ``$``; any other ``$`` would be expanded."""
    assert re.fullmatch(r"(?:\$\$|[^$])*", word, re.DOTALL), f"unescaped $ in {word[:200]!r}"
    return word.replace("$$", "$")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None or SYSTEMD is None, reason="systemd is not installed")
def test_systemd_reads_exactly_the_configured_command_environment_and_directory(
    tmp_path: Path, public_dir: Path
) -> None:
    env = _env([*HOSTILE, *CONTROL])
    config = _stack(tmp_path, [*HOSTILE, *CONTROL], env)
    units = public_dir / "units"
    result = _deploy("systemd", config, units, "--workdir", "/srv/app dir")
    assert result.returncode == 0, result.stderr
    for path in units.iterdir():
        path.chmod(0o644)
    names = sorted(p.name for p in units.iterdir())
    assert names == sorted(
        ["evil-stack.target", "evil-stack-w.service", f"evil-stack-{EDGE_NAME}.service", f"evil-stack-{LONG_NAME}.service"]
    )

    verify = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [SYSTEMD_ANALYZE or "systemd-analyze", "verify", *[f"./{n}" for n in names]],
        cwd=units, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout + verify.stderr == ""

    dump = _systemd_dump(units, "evil-stack.target", public_dir / "runtime")
    procguard = local_procguard(None)
    for worker in ("w", EDGE_NAME, LONG_NAME):
        block = _unit_block(dump, f"evil-stack-{worker}.service")
        assert f"\n\t\tFragment Path: {units}/evil-stack-{worker}.service\n" in block
        assert block.count("\n\t\t-> ExecStart:\n") == 1, block
        (line,) = re.findall(r"\n\t\t-> ExecStart:\n\t\t\tCommand Line: (.*)\n", block)
        words = [_exec_time(word) for word in _dump_words(line)]
        assert words == _expected_argv(config, worker, procguard)
    block = _unit_block(dump, "evil-stack-w.service")
    for key, value in env.items():
        assert f"\n\t\tEnvironment: {key}={value}\n" in block, key
    # PYTHONUNBUFFERED, PATH, PROCGUARD_STATE_DIR, the two labels and the worker's own: nothing split or added
    assert "\n\t\tEnvironment: PROCGUARD_WORKER=w\n" in block
    assert "\n\t\tEnvironment: PROCGUARD_STACK=evil-stack\n" in block
    assert block.count("\n\t\tEnvironment: ") == 5 + len(env)
    assert "\n\t\tWorkingDirectory: /srv/app dir/work %dir\n" in block


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    config = _stack(tmp_path, [], {"A": "1"})
    text = config.read_text().replace('cwd = "work %dir"', 'cwd = "trailing space "')
    config.write_text(text)
    result = _deploy("systemd", config, tmp_path / "deploy")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "workers.w.cwd: " in result.stderr and "cannot be written for systemd" in result.stderr

    # ExecStart over systemd's 1 MiB line limit: six arguments of 100,000 '%' (each written as '%%')
    config = _stack(tmp_path, ["%" * 100_000] * 6, {"A": "1"})
    result = _deploy("systemd", config, tmp_path / "deploy")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "workers.w: ExecStart= would be" in result.stderr and "systemd does not load" in result.stderr
    assert not (tmp_path / "deploy").exists()


# --- Kubernetes ----------------------------------------------------------------

KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")


def _kubelet_expand(text: str, lookup: Callable[[str], str]) -> str:
    """The kubelet's $(NAME) expansion of command, args and env values ('$$' is '$')."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
            elif nxt == "(" and (close := text.find(")", i + 2)) != -1:
                out.append(lookup(text[i + 2 : close]))
                i = close + 1
                continue
            else:
                out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


@pytest.mark.skipif(not KUBERNETES_VALIDATE.exists(), reason="kubernetes-validate is not installed")
def test_kubernetes_manifests_validate_and_carry_exactly_the_configured_values(tmp_path: Path) -> None:
    import yaml

    env = _env([*HOSTILE, *CONTROL])
    config = _stack(tmp_path, [*HOSTILE, *CONTROL], env)
    out = tmp_path / "deploy"
    result = _deploy("kubernetes", config, out, "--image", "registry.example/evil:1")
    assert result.returncode == 0, result.stderr
    paths = sorted(out.iterdir())
    assert len(paths) == 3
    validate = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [str(KUBERNETES_VALIDATE), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=180
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert validate.stdout.count("passed") == 3 and "WARN" not in validate.stdout + validate.stderr

    def defined(name: str) -> str:
        return f"<expanded {name}>"  # any reference left unescaped would show

    for path in paths:
        text = path.read_text(encoding="utf-8")
        # Go's YAML reader refuses surrogate-pair escapes and raw DEL/C1/U+FFFE, and folds raw NEL
        assert not re.search(r"\\ud[89a-f][0-9a-f]{2}", text, re.IGNORECASE), path.name
        assert not re.search("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]", text), path.name
        manifest = yaml.safe_load(text)
        pod = manifest["spec"]["template"]
        for labels in (manifest["metadata"]["labels"], pod["metadata"]["labels"]):
            assert all(_LABEL_VALUE.match(value) for value in labels.values()), labels
        (container,) = pod["spec"]["containers"]
        worker = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        command = [_kubelet_expand(word, defined) for word in container["command"]]
        name = next(n for n in ("w", EDGE_NAME, LONG_NAME) if n.rstrip("-_") == worker)
        expected = _expected_argv(config, name, ["procguard"])
        # the pod's own flags (health port and host) differ; the worker's command is the same
        assert command[command.index("--") :] == expected[expected.index("--") :]
        if name == "w":
            values = {e["name"]: _kubelet_expand(e["value"], defined) for e in container["env"]}
            for key, value in env.items():
                assert values[key] == value, key


# --- every engine -----------------------------------------------------------------

TOO_LONG = "x" * (128 * 1024)


@pytest.mark.parametrize("target", ["systemd", "supervisor", "kubernetes"])
@pytest.mark.parametrize("where", ["command", "env"])
def test_a_value_longer_than_linux_passes_is_refused_by_every_engine(tmp_path: Path, target: str, where: str) -> None:
    args, env = ([TOO_LONG], {"A": "1"}) if where == "command" else ([], {"X": TOO_LONG})
    config = _stack(tmp_path, args, env)
    result = _deploy(target, config, tmp_path / "deploy", "--image", "registry.example/evil:1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and len(result.stderr) < 600, result.stderr
    key = "workers.w.command" if where == "command" else "workers.w.env.X"
    engine = {"supervisor": "supervisord", "kubernetes": "Kubernetes"}.get(target, target)
    assert f"{key}: 'xxx" in result.stderr and f"cannot be written for {engine}" in result.stderr
    assert "Linux passes at most 131072" in result.stderr
    assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("target", ["systemd", "supervisor", "kubernetes"])
def test_a_config_file_name_cannot_add_a_line_to_a_generated_file(tmp_path: Path, target: str) -> None:
    """The 'generated from FILE' comment holds the user's file name: a newline in it stays escaped."""
    evil = tmp_path / "x\n[program:evil]\ncommand=false\nExecStartPre=false\nkind: Secret\n.toml"
    evil.write_text('[project]\nname = "p"\n[workers.w]\ncommand = "/bin/true"\n')
    result = _deploy(target, evil, tmp_path / "deploy", "--image", "registry.example/p:1")
    assert result.returncode == 0, result.stderr
    for path in (tmp_path / "deploy").iterdir():
        first, rest = path.read_text().split("\n", 1)
        assert "x\\n[program:evil]\\ncommand=false" in first
        assert "evil" not in rest and "ExecStartPre" not in rest and "Secret" not in rest
