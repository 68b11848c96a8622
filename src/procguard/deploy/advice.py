"""What ``procguard deploy`` says beside the files: why they would not work as generated, and
what to run next.

The renderers write correct files for the settings they are given; some
settings still make a unit that cannot work on the machine it is meant for
(a working directory under /tmp hidden by the unit's own private /tmp, a
supervisord log directory that does not exist, a user this machine does not
know). Each such case is one line here, checked against this machine's file
system and users: deploy is usually run where the files will be installed,
and a warning that may not apply elsewhere costs less than a unit that
fails at its first start.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import StackConfig
from .settings import worker_workdir

#: Directories ``PrivateTmp=yes`` replaces with an empty one of the unit's own.
PRIVATE_TMP = ("/tmp", "/var/tmp")


def _under(path: str, roots: Sequence[str]) -> str | None:
    normal = posixpath.normpath(path)
    for root in roots:
        if normal == root or normal.startswith(root + "/"):
            return root
    return None


def _user_known(name: str) -> bool:
    import pwd

    try:
        if name.isdigit():
            pwd.getpwuid(int(name))
        else:
            pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def deploy_warnings(
    target: str,
    config: StackConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    workdir: str,
    procguard: Sequence[str],
) -> list[str]:
    """One line per reason the generated files would not work as they are (empty: none found)."""
    own = settings.get(target, {})
    found: list[str] = []
    if target in ("systemd", "supervisor"):
        user = own.get("user")
        if user and not _user_known(str(user)):
            found.append(
                f"user {user!r} does not exist on this machine: {_engine(target)} cannot run the "
                "workers as it (create it, or pass --user with an existing one)"
            )
    if target == "systemd":
        found += _systemd_warnings(config, own, workdir=workdir, procguard=procguard)
    if target == "supervisor":
        log_dir = str(own.get("log_dir", f"/var/log/{config.project.name}"))
        if not Path(log_dir).is_dir():
            found.append(
                f"log directory {log_dir} does not exist on this machine: supervisord will not start the "
                f"programs until it does (mkdir -p {shlex.quote(log_dir)}, or set log_dir in "
                "[deploy.supervisor])"
            )
    return found


def _systemd_warnings(
    config: StackConfig, own: Mapping[str, Any], *, workdir: str, procguard: Sequence[str]
) -> list[str]:
    found: list[str] = []
    hidden: dict[str, list[str]] = {}  # working directory under a private /tmp -> its workers
    for worker in config.workers.values():
        cwd = worker_workdir(worker, workdir)
        if _under(cwd, PRIVATE_TMP) is not None:
            hidden.setdefault(cwd, []).append(worker.name)
    for cwd, names in hidden.items():
        found.append(
            f"WorkingDirectory={cwd} (workers {', '.join(names)}) is under {_under(cwd, PRIVATE_TMP)}, "
            "which the units' PrivateTmp=yes replaces with an empty directory: they will not start "
            "(move the code out of /tmp and pass --workdir)"
        )
    program = procguard[0] if procguard else ""
    root = _under(program, PRIVATE_TMP) if program.startswith("/") else None
    if root is not None:
        found.append(
            f"ExecStart runs {program}, under {root}, which the units' PrivateTmp=yes hides: no unit will "
            "start (install procguard in a virtualenv outside /tmp and pass --venv)"
        )
    if not own.get("user"):
        private = sorted({p for p in (workdir, program) if p and _under(p, ("/root",))})
        if private:
            found.append(
                f"{private[0]} is under /root, which the units' DynamicUser=yes cannot read: no unit will "
                "start (pass --user, or move the code and the virtualenv out of /root)"
            )
    return found


def _engine(target: str) -> str:
    return {"supervisor": "supervisord"}.get(target, target)


def next_steps(
    target: str, config: StackConfig, settings: Mapping[str, Mapping[str, Any]], written: Sequence[Path]
) -> list[str]:
    """The commands that install and start what was written (one per line, to copy and run)."""
    if not written:
        return []
    directory = shlex.quote(str(written[0].parent))
    project = config.project.name
    if target == "systemd":
        names = " ".join(shlex.quote(path.name) for path in written)
        files = " ".join(f"{directory}/{shlex.quote(path.name)}" for path in written)
        with_target = settings.get("systemd", {}).get("target", True)
        enable = f"{project}.target" if with_target else " ".join(
            shlex.quote(path.name) for path in written if path.name.endswith(".service")
        )
        return [
            f"sudo cp {files} /etc/systemd/system/",
            "sudo systemctl daemon-reload",
            f"sudo systemctl enable --now {enable}",
            f"systemctl status {names}",
        ]
    if target == "supervisor":
        files = " ".join(f"{directory}/{shlex.quote(path.name)}" for path in written)
        return [
            f"sudo cp {files} /etc/supervisor/conf.d/",
            "sudo supervisorctl reread",
            "sudo supervisorctl update",
            f"sudo supervisorctl status '{project}:*'",
        ]
    if target == "kubernetes":
        steps = []
        namespace = settings.get("kubernetes", {}).get("namespace")
        if namespace:
            steps.append(f"kubectl create namespace {shlex.quote(str(namespace))}  # once, if missing")
        steps += [
            f"kubectl apply -f {directory}/",
            f"kubectl get deployments -l app.kubernetes.io/name={project}",
        ]
        return steps
    if target == "prometheus":
        files = " ".join(f"{directory}/{shlex.quote(path.name)}" for path in written)
        return [
            f"sudo cp {files} /etc/prometheus/",
            "# in /etc/prometheus/prometheus.yml: the -scrape.yml jobs under scrape_configs "
            "(or scrape_config_files, Prometheus 2.43+), the -alerts.yml under rule_files",
            "promtool check config /etc/prometheus/prometheus.yml",
            "sudo systemctl reload prometheus",
        ]
    return []
