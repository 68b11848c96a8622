"""``procguard up``: supervise a whole stack from procguard.toml.

Modules, one job each:

- :mod:`.states` -- worker states and the legal transitions between them
- :mod:`.backoff` -- the pure restart decision (policy, backoff, start limit)
- :mod:`.settings` -- the supervisor's own knobs (periods, probe thresholds)
- :mod:`.procscan` -- cheap memory/CPU readings of worker process trees
- :mod:`.logs` -- per-worker rotated log files and prefixed foreground output
- :mod:`.history` -- the SQLite history of starts and stops
- :mod:`.control` -- the unix-socket control protocol (server side and client)
- :mod:`.watchdog` -- the tiny process that kills the workers if the supervisor dies
- :mod:`.worker` -- one supervised worker: spawn, watch, stop
- :mod:`.lifecycle` -- each worker's transitions: spawn, exit, restart or not, stop, recycle
- :mod:`.leftovers` -- process groups whose leader exited: TERM, then KILL after grace
- :mod:`.probe` -- liveness probes of the workers' ``/health`` from a side thread
- :mod:`.shutdown` -- stopping the whole stack in reverse dependency order
- :mod:`.commands` -- what each control request (start, stop, status, down ...) does
- :mod:`.wakeup` -- the loop's wake-up pipe and record-only signal handlers
- :mod:`.view` -- the immutable view the status page reads
- :mod:`.supervisor` -- the event loop tying them together
- :mod:`.startup` -- before the loop: the stack's lock, the stale sweep, history repair;
  and both ends of ``up --detach``'s ready pipe
- :mod:`.statuspage` -- the HTML status page, ``/api/workers`` and ``/metrics``

Importing this package starts nothing.
"""
