"""Prometheus: a scrape config for a stack's health endpoints and the alert rules that go with it.

``procguard deploy prometheus`` writes two files (pure render, like the other
targets; JSON-compatible YAML, so no name can inject structure):

``<stack>-scrape.yml``
    ``scrape_configs`` for the hosts the systemd/supervisord files deploy to:
    every worker's health endpoint (``health_host:health_port``; a worker
    bound to every address is scraped on 127.0.0.1), labelled ``worker`` and
    ``stack``; ``scheme: https`` with ``tls_config.ca_file`` where the worker
    serves TLS; ``authorization.credentials_file`` where it requires a token.
    Workers that differ in scheme or credentials go to separate jobs
    (``procguard``, ``procguard-2``, ...). ``honor_labels`` keeps the labels the
    endpoints put on their own samples; the target labels give ``up`` (the
    scrape's own series) the same ``worker`` and ``stack``. The status port of
    ``procguard up`` (``[project] status_port``) is one more job,
    ``procguard-supervisor``, where the stack runs under it.
``<stack>-alerts.yml``
    One rule group: worker down, unhealthy, restarting or recycling often,
    memory near its limit, heartbeat stale, a circuit open. Each alert has a
    ``summary``, a ``description`` naming the worker and the reason, and a
    ``runbook_url`` pointing at the section of the alerts page that
    explains it. Restarts are counted as changes of
    ``procguard_start_time_seconds`` (a new process has a new start time,
    whoever started it: procguard's supervisor, systemd, supervisord or the
    kubelet).

The metric names are the ones :mod:`procguard.health.exposition` exports
(``procguard_circuit_state`` is the circuit breaker's gauge: 2 = open).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ..config import StackConfig, WorkerConfig
from ..copies import copy_port
from ..errors import UsageError
from .escape import yaml_json
from .writer import RenderedFile, header

#: Where each alert's runbook section lives (anchors are the alert names, lowercased).
RUNBOOK = "https://github.com/procguard/procguard/blob/main/docs/ALERTS.md"

#: Restarts (or recycles) in an hour above which ``ProcguardWorkerRestartingOften`` fires.
RESTARTS_PER_HOUR = 3
#: Share of the memory limit above which ``ProcguardMemoryNearLimit`` fires.
MEMORY_NEAR = 0.9
#: A heartbeat older than this share of the worker's heartbeat timeout is stale.
HEARTBEAT_STALE_SHARE = 0.5
#: ``procguard_circuit_state`` value of an open circuit.
CIRCUIT_OPEN = 2

_ANY_ADDRESS = ("0.0.0.0", "::")


class ScrapeOptions(NamedTuple):
    """What the Prometheus side needs that procguard.toml cannot say (the flags of ``deploy prometheus``)."""

    credentials_file: str | None = None  # the token file on the Prometheus host; default: health_token_file
    ca_file: str | None = None  # the CA that signed the health certificates; default: each one's own cert
    server_name: str | None = None  # the name to check the certificates against; default: the target's host


class _Job(NamedTuple):
    scheme: str
    ca_file: str | None
    credentials_file: str | None


def _target_host(host: str) -> str:
    if host in _ANY_ADDRESS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def worker_targets(worker: WorkerConfig) -> list[str]:
    """``host:port`` of every health endpoint of ``worker`` (none without a ``health_port``).

    The one place that says where a worker's endpoints are: a worker that
    runs several copies lists each copy's port here.
    """
    port = worker.limits.health_port
    if not port:
        return []
    host = _target_host(worker.limits.health_host)
    return [f"{host}:{copy_port(port, index)}" for index in range(1, worker.instances + 1)]


def _credentials(worker: WorkerConfig, options: ScrapeOptions) -> str | None:
    limits = worker.limits
    has_token = limits.health_token_file is not None or bool(worker.env.get("PROCGUARD_HEALTH_TOKEN"))
    if options.credentials_file is not None and has_token:
        return options.credentials_file
    if limits.health_token_file is not None:
        return limits.health_token_file
    if worker.env.get("PROCGUARD_HEALTH_TOKEN"):
        msg = (
            f"workers.{worker.name}: its token is PROCGUARD_HEALTH_TOKEN in its env, which Prometheus "
            "cannot read (give --credentials-file: a file on the Prometheus host holding that token, "
            "or set health_token_file)"
        )
        raise UsageError(msg)
    return None


def _job_of(worker: WorkerConfig, options: ScrapeOptions) -> _Job:
    limits = worker.limits
    if limits.health_tls_cert is None:
        return _Job("http", None, _credentials(worker, options))
    return _Job("https", options.ca_file or limits.health_tls_cert, _credentials(worker, options))


def _job(
    name: str, job: _Job, static_configs: list[dict[str, Any]], options: ScrapeOptions
) -> dict[str, Any]:
    body: dict[str, Any] = {"job_name": name, "honor_labels": True, "metrics_path": "/metrics",
                            "scheme": job.scheme}
    if job.scheme == "https":
        tls: dict[str, Any] = {"min_version": "TLS12"}
        if job.ca_file is not None:
            tls["ca_file"] = job.ca_file
        if options.server_name is not None:
            tls["server_name"] = options.server_name
        body["tls_config"] = tls
    if job.credentials_file is not None:
        body["authorization"] = {"type": "Bearer", "credentials_file": job.credentials_file}
    body["static_configs"] = static_configs
    return body


_NO_OPTIONS = ScrapeOptions()


def scrape_config(config: StackConfig, options: ScrapeOptions = _NO_OPTIONS) -> dict[str, Any]:
    """The ``scrape_configs`` document for ``config`` (plain data)."""
    stack = config.project.name
    jobs: dict[_Job, list[dict[str, Any]]] = {}
    for worker in config.workers.values():
        targets = worker_targets(worker)
        if not targets:
            continue
        labels = {"stack": stack, "worker": worker.name}
        job = _job_of(worker, options)
        for index, target in enumerate(targets, start=1):  # each copy its own `copy` label, as under up
            copy = {"copy": str(index)} if worker.instances > 1 else {}
            jobs.setdefault(job, []).append({"targets": [target], "labels": {**labels, **copy}})
    scrape_configs = [
        _job("procguard" if index == 0 else f"procguard-{index + 1}", job, entries, options)
        for index, (job, entries) in enumerate(jobs.items())
    ]
    project = config.project
    if project.status_port:
        tls_cert = project.status_tls_cert
        job = _Job("https" if tls_cert else "http", (options.ca_file or tls_cert) if tls_cert else None, None)
        target = f"{_target_host(project.status_host)}:{project.status_port}"
        scrape_configs.append(
            _job("procguard-supervisor", job, [{"targets": [target], "labels": {"stack": stack}}], options)
        )
    if not scrape_configs:
        msg = "no worker has a health_port and there is no status_port: nothing to scrape (set health_port)"
        raise UsageError(msg)
    return {"scrape_configs": scrape_configs}


def _rule(
    alert: str, expr: str, *, duration: str, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": alert,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOK}#{alert.lower()}",
        },
    }


def _heartbeat_expr(config: StackConfig, selector: str) -> str | None:
    """``procguard_heartbeat_age_seconds`` over each loop worker's own stale threshold, or None."""
    parts = []
    for worker in config.workers.values():
        timeout = worker.limits.heartbeat_timeout_s
        if worker.run is None or not worker.limits.health_port or not timeout:
            continue
        threshold = f"{timeout * HEARTBEAT_STALE_SHARE:g}"
        parts.append(f'procguard_heartbeat_age_seconds{{{selector},worker="{worker.name}"}} > {threshold}')
    return " or ".join(parts) or None


def alert_rules(config: StackConfig) -> dict[str, Any]:
    """The rule group for ``config`` (plain data)."""
    stack = config.project.name
    sel = f'stack="{stack}"'
    who = "worker {{ $labels.worker }} of stack {{ $labels.stack }}"
    rules = [
        _rule(
            "ProcguardWorkerDown",
            f'up{{{sel},worker!=""}} == 0',
            duration="1m",
            severity="critical",
            summary=f"procguard {who} is down",
            description=f"The health endpoint of {who} ({{{{ $labels.instance }}}}) has not answered "
            "a scrape for 1 minute: the worker is stopped, crashed and not restarted, or its port is "
            "unreachable.",
        ),
        _rule(
            "ProcguardWorkerUnhealthy",
            f"procguard_healthy{{{sel}}} == 0",
            duration="5m",
            severity="warning",
            summary=f"procguard {who} has been unhealthy for 5 minutes",
            description=f"/health of {who} has answered 503 for 5 minutes: its heartbeat is late, a limit "
            "is breached, it is stopping, or it is between two processes. The reason is in the body of "
            "/health.",
        ),
        _rule(
            "ProcguardWorkerRestartingOften",
            f"changes(procguard_start_time_seconds{{{sel}}}[1h]) > {RESTARTS_PER_HOUR}",
            duration="0m",
            severity="warning",
            summary=f"procguard {who} restarts often",
            description=f"{who} has started {{{{ $value }}}} new processes in the last hour (more than "
            f"{RESTARTS_PER_HOUR}): restarts after crashes, or limit recycles. The reason of each stop is "
            "in the worker's last log line and its exit status (procguard history under procguard up).",
        ),
        _rule(
            "ProcguardMemoryNearLimit",
            f"procguard_memory_resident_bytes{{{sel}}} / procguard_memory_limit_bytes{{{sel}}}"
            f" > {MEMORY_NEAR:g}",
            duration="10m",
            severity="warning",
            summary=f"procguard {who} is near its memory limit",
            description=f"{who} has used more than {MEMORY_NEAR:.0%} of its memory limit for 10 minutes "
            "(now {{ $value | humanizePercentage }}); over the limit it is recycled.",
        ),
        _rule(
            "ProcguardCircuitOpen",
            f"procguard_circuit_state{{{sel}}} == {CIRCUIT_OPEN}",
            duration="5m",
            severity="warning",
            summary=f"procguard {who}: circuit {{{{ $labels.circuit }}}} is open",
            description=f"The circuit {{{{ $labels.circuit }}}} of {who} has been open for 5 minutes: "
            "calls to that dependency are refused because it kept failing.",
        ),
    ]
    heartbeat = _heartbeat_expr(config, sel)
    if heartbeat is not None:
        rules.insert(4, _rule(
            "ProcguardHeartbeatStale",
            heartbeat,
            duration="2m",
            severity="warning",
            summary=f"procguard {who}: heartbeat stale",
            description=f"The work loop of {who} last showed progress {{{{ $value | humanizeDuration }}}} "
            f"ago, more than {HEARTBEAT_STALE_SHARE:.0%} of its heartbeat timeout, for 2 minutes: the "
            "loop is blocked or much slower than usual. At the timeout it turns unhealthy and is stopped.",
        ))
    return {"groups": [{"name": f"procguard-{stack}", "rules": rules}]}


def render_prometheus(config: StackConfig, options: ScrapeOptions = _NO_OPTIONS) -> list[RenderedFile]:
    """``<stack>-scrape.yml`` and ``<stack>-alerts.yml`` (pure)."""
    stack = config.project.name
    top = f"# {header(config.path.name)}\n"
    scrape = (
        top + "# Add these jobs under scrape_configs in prometheus.yml, or load the file with\n"
        "# scrape_config_files (Prometheus 2.43 or later).\n"
        + yaml_json(scrape_config(config, options)) + "\n"
    )
    alerts = (
        top + "# List this file under rule_files in prometheus.yml.\n" + yaml_json(alert_rules(config)) + "\n"
    )
    return [RenderedFile(f"{stack}-scrape.yml", scrape), RenderedFile(f"{stack}-alerts.yml", alerts)]


def options_from(flags: Mapping[str, object]) -> ScrapeOptions:
    """The flags of ``procguard deploy prometheus`` (absolute paths where given)."""
    values: dict[str, str | None] = {}
    for key in ScrapeOptions._fields:
        value = flags.get(key)
        if value is not None and key != "server_name" and not str(value).startswith("/"):
            flag = "--" + key.replace("_", "-")
            msg = f"{flag}: {value!r} is not an absolute path (Prometheus reads it on its own host)"
            raise UsageError(msg)
        values[key] = None if value is None else str(value)
    return ScrapeOptions(**values)
