"""``procguard run``: a function (in process) or a command (from outside) as a managed worker.

- :mod:`.options`: the parsed, checked settings of one run (:class:`RunOptions`);
- :mod:`.function`: function mode, the iteration loop under a ProcessManager;
- :mod:`.command`: command mode, a child held to the same limits from outside.
"""
