"""A stop signal while ``procguard run`` is still starting is a graceful stop, never death by signal.

``procguard run`` records SIGTERM/SIGINT before it does anything else
(importing the target, taking the lock, starting the manager), so a stop
that arrives while the target's module is still importing ends with the
documented status (143 for SIGTERM) and the stop reason ``signal``, not
with the default action (killed, -15). The handler being installed is
observable: ``SigCgt`` in /proc/PID/status.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from .helpers import PROCGUARD, PYTHON, python_env, read_output, wait_for

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & SIGTERM_BIT)


def test_sigterm_while_the_target_is_importing_is_a_graceful_stop(tmp_path: Path, state_dir: Path,
                                                                  spawn: Any) -> None:
    gate, importing = tmp_path / "gate", tmp_path / "importing"
    (tmp_path / "slow_import.py").write_text(textwrap.dedent(f"""
        import os, time
        open({str(importing)!r}, "w").close()
        while not os.path.exists({str(gate)!r}):   # the import takes as long as the test wants
            time.sleep(0.01)

        def work():
            pass
    """))
    proc = spawn([*PROCGUARD, "run", "slow_import:work", "--health-port", "0", "--interval", "10s"],
                 cwd=tmp_path)
    wait_for(importing.exists, message=lambda: f"the target's import to begin; {read_output(proc)}")
    assert catches_sigterm(proc.pid), "no SIGTERM handler while the target is still importing"
    proc.send_signal(signal.SIGTERM)
    gate.touch()
    out = read_output(proc)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopping: signal (received SIGTERM) after 0 iterations" in out, out  # no work began


def test_the_handlers_come_before_the_heavy_imports() -> None:
    """What ``procguard run`` loads before its handlers are in is the window a SIGTERM still kills in.

    The entry module and the signal capture must not pull in typing, logging
    or argparse (each several ms): only the interpreter's own start is left.
    """
    probe = ("import sys; import procguard.cli.main, procguard.signals; "
             "print(' '.join(m for m in ('typing', 'logging', 'argparse', 'procguard.reasons') if m in sys.modules))")
    result = subprocess.run([PYTHON, "-c", probe], env=python_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
