"""The files checked in under examples/analyticbot/deploy/ are what `procguard deploy` renders today.

Whole files are compared, not the data passed to a renderer, so a quoting
or ordering change shows up here. To refresh them after an intended change,
run the commands in examples/analyticbot/deploy/README.md (the flags below).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.cli.main import main
from procguard.config import load_config
from procguard.deploy import all_settings, render

from .helpers import PROCGUARD, REPO_ROOT, python_env

EXAMPLE = REPO_ROOT / "examples" / "analyticbot"
CONFIG = EXAMPLE / "procguard.toml"
DEPLOY = EXAMPLE / "deploy"

#: Fixed, machine-independent target paths for the checked-in files: the repository
#: is checked out at /opt/analyticbot/app (/app in the image), so the config's
#: directory is .../examples/analyticbot there.
FLAGS: dict[str, dict[str, str]] = {
    "systemd": {
        "venv": "/opt/analyticbot/venv",
        "workdir": "/opt/analyticbot/app/examples/analyticbot",
        "user": "analyticbot",
    },
    "supervisor": {
        "venv": "/opt/analyticbot/venv",
        "workdir": "/opt/analyticbot/app/examples/analyticbot",
        "user": "analyticbot",
    },
    "kubernetes": {
        "image": "registry.example.com/analyticbot:0.1.0",
        "namespace": "analyticbot",
        "workdir": "/app/examples/analyticbot",
    },
}


def _argv(target: str) -> list[str]:
    argv = ["deploy", target, "-c", str(CONFIG)]
    for key, value in FLAGS[target].items():
        argv += [f"--{key}", value]
    return argv


@pytest.mark.parametrize("target", sorted(FLAGS))
def test_checked_in_files_equal_todays_render(target: str) -> None:
    config = load_config(CONFIG)
    files = render(target, config, all_settings(config, FLAGS[target]))
    directory = DEPLOY / target
    rendered = {f.filename: f.text for f in files}
    on_disk = {p.name: p.read_text() for p in directory.iterdir() if p.is_file()} if directory.is_dir() else {}
    hint = f"refresh with: procguard {' '.join(_argv(target))} (see {DEPLOY.relative_to(REPO_ROOT)}/README.md)"
    assert sorted(on_disk) == sorted(rendered), hint
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{target}/{name} differs from today's render; {hint}"


def test_example_renders_contain_no_machine_paths() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert str(REPO_ROOT) not in text, path
            assert "/tmp/" not in text, path


def test_deploy_command_writes_files_and_prints_their_paths(tmp_path: Path) -> None:
    out = tmp_path / "units"
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [*PROCGUARD, *_argv("systemd"), "-o", str(out)], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    written = sorted(out.iterdir())
    paths, _, steps = result.stdout.partition("next:\n")
    assert paths.splitlines() == [str(p) for p in sorted(written, key=lambda p: paths.find(p.name))]
    assert "sudo systemctl daemon-reload" in steps.splitlines()[1], steps  # what to run next follows
    for path in written:
        assert path.read_text() == (DEPLOY / "systemd" / path.name).read_text()
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_deploy_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_argv("kubernetes"), "-o", "-"]) == 0
    out = capsys.readouterr().out
    for path in (DEPLOY / "kubernetes").iterdir():
        assert f"# ---- {path.name}\n{path.read_text()}" in out


def test_deploy_default_output_is_next_to_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "procguard.toml"
    config.write_text(CONFIG.read_text())
    assert main(["deploy", "supervisor", "-c", str(config), "--venv", "/opt/v", "--workdir", "/opt/app"]) == 0
    assert (tmp_path / "deploy" / "supervisor" / f"{load_config(config).project.name}.conf").exists()


def test_deploy_refuses_to_write_through_a_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    name = f"{load_config(CONFIG).project.name}.conf"
    (out / name).symlink_to(victim)
    assert main([*_argv("supervisor"), "-o", str(out)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "keep me"


def test_bad_flag_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["deploy", "systemd", "-c", str(CONFIG)]
    kube = ["deploy", "kubernetes", "-c", str(CONFIG)]
    for argv, expected in [
        ([*base, "--venv", "relative/venv"], "--venv: 'relative/venv' is not an absolute path"),
        ([*base, "--user", "Robert'); DROP"], "--user:"),
        ([*kube, "--image", "bad image"], "--image:"),
        ([*kube, "--image", "x", "--namespace", "Not_DNS"], "--namespace:"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err, err
        assert err.count("\n") == 1, err


def test_unknown_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["deploy", "docker", "-c", str(CONFIG)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'docker'" in err and err.count("\n") == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_example_units_pass_systemd_analyze(tmp_path: Path) -> None:
    """The checked-in units score low; rendered against this venv (ExecStart must exist) they verify."""
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        result = subprocess.run(  # noqa: PLW1510 - the status is asserted
            ["systemd-analyze", "security", "--offline=yes", f"./{path.name}"],
            cwd=path.parent, capture_output=True, text=True, timeout=120,
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert match and float(match.group(1)) <= 2.5, result.stdout + result.stderr

    config = load_config(CONFIG)
    flags = {**FLAGS["systemd"], "venv": sys.prefix}
    names = []
    for record in render("systemd", config, all_settings(config, flags)):
        (tmp_path / record.filename).write_text(record.text)
        names.append(f"./{record.filename}")
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        ["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_example_manifests_pass_kubernetes_validate() -> None:
    validate = Path(sys.executable).parent / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed in this environment")
    paths = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [str(validate), "--strict", *paths], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(paths) == 5  # 4 Deployments, 1 HorizontalPodAutoscaler
