"""What a generated file does with a worker's ``listen`` socket: one line per worker, said on stderr.

A ``listen`` socket is something ``procguard up`` holds for its workers; no
generated file carries it over, for a reason each engine has:

- systemd: a ``.socket`` unit would hand the socket to the unit's main
  process, which is ``procguard run`` (it holds the limits and feeds the
  watchdog), and the runner does not pass a socket on to the command it runs;
- supervisord: it has no shared listening socket for plain programs (its
  ``fcgi-program`` sockets speak FastCGI);
- Kubernetes: pods do not share sockets; a Service in front of the pods is
  what keeps the address answering while a rolling update replaces them.

So the program binds its own port there (the example api does when no
``LISTEN_FDS`` is set), and the line says so.
"""

from __future__ import annotations

from ..config import StackConfig

_WHY = {
    "systemd": "no .socket unit: the unit's main process is procguard run, which does not pass a socket on",
    "supervisor": "supervisord shares no listening socket between plain programs",
    "kubernetes": "pods share no socket: put a Service in front of them, rolling updates keep it answering",
}


def listen_notes(target: str, config: StackConfig) -> list[str]:
    """One line per worker with ``listen``: not carried into ``target``'s files, and why."""
    return [
        f"workers.{name}.listen = {str(worker.listen)!r} is not carried over ({_WHY[target]});"
        " the program binds its own port there"
        for name, worker in config.workers.items()
        if worker.listen is not None
    ]
