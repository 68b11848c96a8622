"""The reliability table: procguard's promises tried many times over, failures counted.

Run: ``python -m bench.reliability [--quick] [--no-write] [--only N ...]``

Each row tries one way the promises could break, at counts large enough to
mean something, and prints what was tried, how many tries failed and what
was measured; the table goes into docs/benchmarks.md (``<!-- bench:reliability -->``)
unless ``--no-write``. The exit status is 1 when any row failed.

1. SIGKILL of ``procguard run`` whose worker has a family (:mod:`.orphans`)
2. SIGKILL of ``procguard up -d`` whose workers have families (:mod:`.orphans`)
3. concurrent starts of one name (:mod:`.starts`)
4. PID-reuse impostors named by lock records and markers (:mod:`.impostors`)
5. hostile HTTP to a worker's health port (:mod:`.http_rows`, :mod:`.hostile_http`)
6. hostile HTTP to the status page (the same)
7. hostile state-directory contents at ``up -d`` (:mod:`.statedir`)
8. hostile values through every deploy generator (:mod:`.deploy_values`)
9. SIGTERM mid-iteration of the example collector, its store checked (:mod:`.sigterm`)

Everything runs on 127.0.0.1, in private state directories, on free ports;
every process a round starts is stopped by PID, also when the round fails.
"""
