"""``user``, ``group`` and ``umask``: whom a worker runs as under ``procguard up``.

A supervisor started as root (by systemd, in a container) runs each worker
as the account its procguard.toml names, the way supervisord's ``user=``
and systemd's ``User=``/``Group=``/``UMask=`` do: the credentials are
dropped in the child between fork and exec (``setgroups``, ``setgid``,
``setuid``, in that order, by :mod:`subprocess`), so not one instruction of
the worker's own code runs as root. Without ``group`` the worker gets the
user's own group and its supplementary groups (as a login would);
``HOME``, ``USER`` and ``LOGNAME`` follow the user unless ``env`` sets them.

A supervisor that is not root cannot switch users: a config that asks for
it is refused at ``up`` and ``reload`` in one line, instead of every start
failing later. Names are looked up when the stack starts or reloads and
again at each spawn (an account removed meanwhile fails that start, named).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..config import StackConfig, WorkerConfig
from ..errors import UsageError, shown


class Account(NamedTuple):
    """The credentials and environment a worker's process starts with (None: unchanged)."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...] | None
    env: Mapping[str, str]
    umask: int | None
    who: str = ""  # "user app", "group staff": how a refusal names the account

    def denied(self, error: OSError) -> UsageError:
        """A start refused by the system once the credentials were dropped, with what to check."""
        why = error.strerror or str(error)
        return UsageError(
            f"{why} as {self.who} (that account must be able to enter cwd and run the program,"
            " its interpreter and their directories)"
        )

    def popen_kwargs(self) -> dict[str, Any]:
        """The :class:`subprocess.Popen` keywords that apply it in the child before exec."""
        kwargs: dict[str, Any] = {}
        if self.groups is not None:
            kwargs["extra_groups"] = list(self.groups)
        if self.gid is not None:
            kwargs["group"] = self.gid
        if self.uid is not None:
            kwargs["user"] = self.uid
        if self.umask is not None:
            kwargs["umask"] = self.umask
        return kwargs


def _user(worker: WorkerConfig, name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        msg = f"workers.{worker.name}.user: no user {shown(name)} on this machine (use an existing user)"
        raise UsageError(msg) from None


def _group(worker: WorkerConfig, name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        msg = f"workers.{worker.name}.group: no group {shown(name)} on this machine (use an existing group)"
        raise UsageError(msg) from None


def resolve_account(worker: WorkerConfig, *, euid: int | None = None) -> Account:
    """Whom ``worker`` runs as; UsageError (one line) for an unknown name or a supervisor not root."""
    euid = os.geteuid() if euid is None else euid
    if (worker.user or worker.group) and euid != 0:
        key = "user" if worker.user else "group"
        value = worker.user or worker.group
        msg = (
            f"workers.{worker.name}.{key}: procguard up runs as uid {euid}, not root, so it cannot run"
            f" a worker as {shown(value)} (start it as root, or remove {key})"
        )
        raise UsageError(msg)
    uid = gid = None
    groups: tuple[int, ...] | None = None
    env: dict[str, str] = {}
    if worker.user:
        entry = _user(worker, worker.user)
        uid, gid = entry.pw_uid, entry.pw_gid
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        env = {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
    if worker.group:
        gid = _group(worker, worker.group)
        if groups is None:
            groups = ()  # root's supplementary groups do not follow a worker into another group
    who = f"user {worker.user}" if worker.user else f"group {worker.group}" if worker.group else ""
    return Account(uid, gid, groups, env, worker.umask, who)


def check_accounts(config: StackConfig) -> None:
    """Resolve every worker's account now: ``up`` and ``reload`` refuse a config no spawn could honour."""
    for worker in config.workers.values():
        resolve_account(worker)
