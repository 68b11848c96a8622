"""``procguard completion bash|zsh``: the script run by a real bash, worker names from the stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import PROCGUARD, python_env
from .supervisor_workers.stackkit import write_config

BIN = str(Path(sys.executable).parent)  # where the installed 'procguard' script lives


def _env(state_dir: Path) -> dict[str, str]:
    return python_env(PATH=BIN + os.pathsep + os.environ.get("PATH", ""), PROCGUARD_STATE_DIR=str(state_dir))


def _complete(script: Path, cwd: Path, env: dict[str, str], *words: str) -> list[str]:
    """What bash offers for the last of ``words`` after 'procguard', through the generated script."""
    import shlex

    line = " ".join(("procguard", *words))
    quoted = " ".join(shlex.quote(word) for word in words)
    program = (
        f"source {script}\n"
        f"COMP_WORDS=(procguard {quoted})\n"
        f"COMP_CWORD={len(words)}\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        "_shtab_procguard\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "--norc", "-c", program], cwd=cwd, env=env, capture_output=True,
                            text=True, check=True, timeout=60)
    return [word for word in result.stdout.splitlines() if word]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_flags_and_worker_names(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    write_config(tmp_path, {"api": {"command": "sleep 60"}, "collector": {"command": "sleep 60"},
                            "cleaner": {"command": "sleep 60"}}, project="demo")
    script = tmp_path / "procguard.bash"
    made = subprocess.run([*PROCGUARD, "completion", "bash"], env=env, capture_output=True, text=True,
                          check=False)
    assert made.returncode == 0, made.stderr
    script.write_text(made.stdout)

    assert set(_complete(script, tmp_path, env, "st")) == {"status", "start", "stop"}
    assert "--json" in _complete(script, tmp_path, env, "status", "--j")
    # worker names come from the procguard.toml found the usual way, as 'status' would find it
    assert set(_complete(script, tmp_path, env, "status", "c")) == {"collector", "cleaner"}
    assert set(_complete(script, tmp_path, env, "logs", "")) == {"api", "collector", "cleaner", "all"}
    assert _complete(script, tmp_path, env, "history", "--worker", "a") == ["api", "all"]
    assert _complete(script, tmp_path, env, "completion", "z") == ["zsh"]
    # a directory with no stack: no names, no error text in the command line
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _complete(script, elsewhere, env, "stop", "") == []


def test_worker_list_and_bad_shell(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    write_config(tmp_path, {"api": {"command": "sleep 60"}}, project="demo")
    listed = subprocess.run([*PROCGUARD, "completion", "--workers"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and listed.stdout.split() == ["api", "all"] and listed.stderr == ""
    (tmp_path / "procguard.toml").write_text("[project\n")  # broken: nothing, quietly
    listed = subprocess.run([*PROCGUARD, "completion", "--workers"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and listed.stdout == "" and listed.stderr == ""
    for bad in (["fish"], []):
        result = subprocess.run([*PROCGUARD, "completion", *bad], env=env, capture_output=True, text=True,
                                check=False)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "use bash or zsh" in result.stderr and "Traceback" not in result.stderr


def test_zsh_script(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    made = subprocess.run([*PROCGUARD, "completion", "zsh"], env=env, capture_output=True, text=True,
                          check=False)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("#compdef procguard")
    assert "_procguard_workers() {" in made.stdout and "procguard completion --workers" in made.stdout
    if shutil.which("zsh") is not None:
        path = tmp_path / "_procguard"
        path.write_text(made.stdout)
        subprocess.run(["zsh", "-n", str(path)], check=True, timeout=60)


def test_other_commands_do_not_import_shtab(tmp_path: Path) -> None:
    code = ("import sys\nfrom procguard.cli.main import main\n"
            "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'argparse' in sys.modules and 'shtab' not in sys.modules, 'shtab imported'")
    result = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path / "state"), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
