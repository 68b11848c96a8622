"""Health over HTTP and systemd notify for procguard workers.

- :mod:`.server`: :func:`serve_health` / :class:`HealthServer`, the
  ``/health``, ``/ready`` and ``/metrics`` endpoints (docs/HEALTH.md).
- :mod:`.exposition`: the snapshot rendered as JSON or Prometheus text.
- :mod:`.notify`: the systemd ``sd_notify`` protocol (READY, WATCHDOG, ...).

Nothing is imported here so that ``import procguard.health.notify`` stays
cheap (prometheus_client is loaded only where exposition is needed).
"""
