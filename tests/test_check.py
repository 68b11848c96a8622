"""`procguard check`: validate procguard.toml without starting anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from procguard.cli.main import main

from .helpers import PROCGUARD, python_env

GOOD = """
[project]
name = "demo"
[workers.api]
command = "python -m http.server 8000"
health_port = 9091
[workers.collector]
run = "demo.collector:collect"
depends_on = ["api"]
"""


def test_check_accepts_a_valid_file_and_lists_the_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text(GOOD)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "project 'demo', 2 workers, OK" in out
    assert "  api: python -m http.server 8000 (memory 2048MB, max runtime 24h, grace 30s, health :9091)" in out
    assert out.index("  api:") < out.index("  collector:")

    assert main(["check", "-q", "-c", str(path)]) == 0
    assert capsys.readouterr().out == ""


def test_check_uses_procguard_toml_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "procguard.toml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[workers.a]\nrun = 'm:f'\nmemory_limit = '12XB'\n", "workers.a.memory_limit: '12XB' is not a size"),
        ("[workers.a]\nrun = 'm:f'\nbogus = 1\n", "workers.a.bogus: unknown key"),
        ("[workers.a]\nrun = 'm:f'\n[deploy.systemd]\nwatchdog = 'never'\n", "deploy.systemd.watchdog:"),
        ("[workers.a]\nrun = 'm:f'\n[deploy.kubernetes]\nfoo = 1\n", "deploy.kubernetes.foo: unknown key"),
        (
            "[workers.a]\nrun = 'm:f'\ngrace = '60s'\n[deploy.supervisor]\nstopwaitsecs = 30\n",
            "grace 60s must be less than [deploy.supervisor] stopwaitsecs 30s",
        ),
    ],
)
def test_check_reports_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text(text)
    assert main(["check", "-c", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("procguard check: ")
    assert expected in captured.err


def test_check_missing_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "missing.toml")]) == 2
    assert f"{tmp_path / 'missing.toml'}: no such file" in capsys.readouterr().err


def test_check_as_a_real_command_never_prints_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text("[workers.a]\nrun = 'm:f'\nhealth_port = 9091\n[workers.b]\ncommand = 'x'\nhealth_port = 9091\n")
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [*PROCGUARD, "check", "-c", str(path)], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"procguard check: {path}: workers.b.health_port: port 9091 is already used by "
        "workers.a.health_port (use a free port)"
    )
