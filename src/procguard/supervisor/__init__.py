"""``procguard up``: supervise a whole stack from procguard.toml.

Modules, one job each:

- :mod:`.states` -- worker states and the legal transitions between them
- :mod:`.backoff` -- the pure restart decision (policy, backoff, start limit)
- :mod:`.procscan` -- cheap memory/CPU readings of worker process trees
- :mod:`.logs` -- per-worker rotated log files and prefixed foreground output
- :mod:`.history` -- the SQLite history of starts and stops
- :mod:`.control` -- the unix-socket control protocol (server side and client)
- :mod:`.watchdog` -- the tiny process that kills the workers if the supervisor dies
- :mod:`.worker` -- one supervised worker: spawn, watch, stop
- :mod:`.supervisor` -- the event loop tying them together
- :mod:`.statuspage` -- the HTML status page, ``/api/workers`` and ``/metrics``

Importing this package starts nothing.
"""
