"""``procguard run``: a function (in process) or a command (from outside) as a managed worker.

- :mod:`.options`: the parsed, checked settings of one run (:class:`RunOptions`);
- :mod:`.function`: function mode, the iteration loop under a ProcessManager;
- :mod:`.command`: command mode, a child held to the same limits from outside;
- :mod:`.handoff`: a standalone command runner's exec into its small watching stage.
"""

#: Set (as JSON) only in the environment of a command runner's exec into its watching stage
#: (:mod:`.handoff`); here, so that the ``procguard`` entry point checks it without imports.
WATCH_ENV = "PROCGUARD_RUNNER_WATCH"
