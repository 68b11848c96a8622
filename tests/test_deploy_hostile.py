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
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procguard.deploy import local_procguard

from .conftest import Spawn
from .helpers import GLOBAL_TIMEOUT, python_env, read_output, wait_for
from .hostile_deploy import (
    CONTROL,
    EDGE_NAME,
    GO_YAML_TROUBLE,
    HOSTILE,
    KUBERNETES_VALIDATE,
    LABEL_VALUE,
    LONG_NAME,
    SUPERVISORD,
    SUPERVISORD_ENV,
    SUPERVISORD_ENV_REFUSED,
    SYSTEMD,
    SYSTEMD_ANALYZE,
    EngineUnavailable,
    deploy,
    exec_start_words,
    expected_argv,
    hostile_env,
    hostile_stack,
    kubelet_expand,
    supervisord_conf,
    systemd_dump,
    unit_block,
)

# --- supervisord: a real run ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisor is not installed in this environment")
def test_supervisord_runs_programs_with_exactly_the_configured_argv_and_environment(
    tmp_path: Path, spawn: Spawn, state_dir: Path
) -> None:
    env = hostile_env(SUPERVISORD_ENV)
    config = hostile_stack(tmp_path, HOSTILE, env)
    result = deploy("supervisor", config, tmp_path / "deploy")
    assert result.returncode == 0, result.stderr
    conf = supervisord_conf(tmp_path, tmp_path / "deploy" / "evil-stack.conf")
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
    assert runner == expected_argv(config, "w", local_procguard(None))

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
    config = hostile_stack(tmp_path, [], {"X": value})
    result = deploy("supervisor", config, tmp_path / "deploy")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "workers.w.env.X: " in result.stderr and "cannot be written for supervisord" in result.stderr
    assert reason in result.stderr
    assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("value", CONTROL, ids=["newline", "escape", "carriage-return", "control"])
def test_supervisord_refuses_control_characters_in_arguments_and_env(tmp_path: Path, value: str) -> None:
    for args, env, key in (([value], {"A": "1"}, "workers.w.command"), ([], {"X": value}, "workers.w.env.X")):
        config = hostile_stack(tmp_path, args, env)
        result = deploy("supervisor", config, tmp_path / "deploy")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"{key}: " in result.stderr and "supervisord" in result.stderr and "newline or control" in result.stderr
        assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("key", ["workers.w.cwd", "deploy.supervisor.log_dir"])
def test_supervisord_refuses_here_in_plain_values(tmp_path: Path, key: str) -> None:
    config = hostile_stack(tmp_path, [], {"A": "1"})
    text = config.read_text()
    if key.endswith("cwd"):
        text = text.replace('cwd = "work %dir"', 'cwd = "work%(here)s"')
    else:
        text = text.replace("log%dir", "log%(here)s")
    config.write_text(text)
    result = deploy("supervisor", config, tmp_path / "deploy")
    assert result.returncode == 2, result.stderr
    assert f"{key}: " in result.stderr and "%(here)s" in result.stderr and result.stderr.count("\n") == 1


# --- systemd: verify, then what systemd itself parsed -----------------------------


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an unprivileged user can read (pytest's tmp_path is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="procguard-units-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None or SYSTEMD is None, reason="systemd is not installed")
def test_systemd_reads_exactly_the_configured_command_environment_and_directory(
    tmp_path: Path, public_dir: Path
) -> None:
    env = hostile_env([*HOSTILE, *CONTROL])
    config = hostile_stack(tmp_path, [*HOSTILE, *CONTROL], env)
    units = public_dir / "units"
    result = deploy("systemd", config, units, "--workdir", "/srv/app dir")
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

    try:
        dump = systemd_dump(units, "evil-stack.target", public_dir / "runtime")
    except EngineUnavailable as reason:
        pytest.skip(str(reason))
    procguard = local_procguard(None)
    for worker in ("w", EDGE_NAME, LONG_NAME):
        block = unit_block(dump, f"evil-stack-{worker}.service")
        assert f"\n\t\tFragment Path: {units}/evil-stack-{worker}.service\n" in block
        words = exec_start_words(block)
        assert words == expected_argv(config, worker, procguard)
    block = unit_block(dump, "evil-stack-w.service")
    for key, value in env.items():
        assert f"\n\t\tEnvironment: {key}={value}\n" in block, key
    # PYTHONUNBUFFERED, PATH, PROCGUARD_STATE_DIR, the two labels and the worker's own: nothing split or added
    assert "\n\t\tEnvironment: PROCGUARD_WORKER=w\n" in block
    assert "\n\t\tEnvironment: PROCGUARD_STACK=evil-stack\n" in block
    assert block.count("\n\t\tEnvironment: ") == 5 + len(env)
    assert "\n\t\tWorkingDirectory: /srv/app dir/work %dir\n" in block


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    config = hostile_stack(tmp_path, [], {"A": "1"})
    text = config.read_text().replace('cwd = "work %dir"', 'cwd = "trailing space "')
    config.write_text(text)
    result = deploy("systemd", config, tmp_path / "deploy")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "workers.w.cwd: " in result.stderr and "cannot be written for systemd" in result.stderr

    # ExecStart over systemd's 1 MiB line limit: six arguments of 100,000 '%' (each written as '%%')
    config = hostile_stack(tmp_path, ["%" * 100_000] * 6, {"A": "1"})
    result = deploy("systemd", config, tmp_path / "deploy")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "workers.w: ExecStart= would be" in result.stderr and "systemd does not load" in result.stderr
    assert not (tmp_path / "deploy").exists()


# --- Kubernetes ----------------------------------------------------------------


@pytest.mark.skipif(not KUBERNETES_VALIDATE.exists(), reason="kubernetes-validate is not installed")
def test_kubernetes_manifests_validate_and_carry_exactly_the_configured_values(tmp_path: Path) -> None:
    import yaml

    env = hostile_env([*HOSTILE, *CONTROL])
    config = hostile_stack(tmp_path, [*HOSTILE, *CONTROL], env)
    out = tmp_path / "deploy"
    result = deploy("kubernetes", config, out, "--image", "registry.example/evil:1")
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
        assert not any(trouble.search(text) for trouble in GO_YAML_TROUBLE), path.name
        manifest = yaml.safe_load(text)
        pod = manifest["spec"]["template"]
        for labels in (manifest["metadata"]["labels"], pod["metadata"]["labels"]):
            assert all(LABEL_VALUE.match(value) for value in labels.values()), labels
        (container,) = pod["spec"]["containers"]
        worker = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        command = [kubelet_expand(word, defined) for word in container["command"]]
        name = next(n for n in ("w", EDGE_NAME, LONG_NAME) if n.rstrip("-_") == worker)
        expected = expected_argv(config, name, ["procguard"])
        # the pod's own flags (health port and host) differ; the worker's command is the same
        assert command[command.index("--") :] == expected[expected.index("--") :]
        if name == "w":
            values = {e["name"]: kubelet_expand(e["value"], defined) for e in container["env"]}
            for key, value in env.items():
                assert values[key] == value, key


# --- every engine -----------------------------------------------------------------

TOO_LONG = "x" * (128 * 1024)


@pytest.mark.parametrize("target", ["systemd", "supervisor", "kubernetes"])
@pytest.mark.parametrize("where", ["command", "env"])
def test_a_value_longer_than_linux_passes_is_refused_by_every_engine(tmp_path: Path, target: str, where: str) -> None:
    args, env = ([TOO_LONG], {"A": "1"}) if where == "command" else ([], {"X": TOO_LONG})
    config = hostile_stack(tmp_path, args, env)
    result = deploy(target, config, tmp_path / "deploy", "--image", "registry.example/evil:1")
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
    result = deploy(target, evil, tmp_path / "deploy", "--image", "registry.example/p:1")
    assert result.returncode == 0, result.stderr
    for path in (tmp_path / "deploy").iterdir():
        first, rest = path.read_text().split("\n", 1)
        assert "x\\n[program:evil]\\ncommand=false" in first
        assert "evil" not in rest and "ExecStartPre" not in rest and "Secret" not in rest
