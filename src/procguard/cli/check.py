"""``procguard check [-c FILE]``: validate procguard.toml without starting anything.

Checks what ``up`` and ``deploy`` would refuse: the config itself (keys,
types, units, names, ports, dependencies), the ``[deploy.*]`` tables, and the
timeout/memory budget, and the files the stack names on this machine (TLS
certificates and keys, token files: readable, PEM, a key that matches its
certificate). Prints one line per worker when all is well.
"""

from __future__ import annotations

import argparse

from ..config import WorkerConfig, load_config, start_order
from ..limits import format_bytes
from ..reasons import ExitStatus


def _duration(seconds: float) -> str:
    """Exact and short: ``24h``, ``90m``, ``45s``."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def configure_check(parser: argparse.ArgumentParser) -> None:
    """Flags of ``procguard check``."""
    parser.add_argument("-c", "--config", metavar="FILE", help="procguard.toml (default: ./procguard.toml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when the file is valid")


def run_check(args: argparse.Namespace) -> int:
    """Validate; exit 0 when valid, 2 (one line naming file and key) when not."""
    from ..deploy import all_settings
    from ..deploy.budget import enforce_budget
    from ..health.tls import check_stack

    config = load_config(args.config)
    enforce_budget(config, all_settings(config))
    check_stack(config)
    if args.quiet:
        return ExitStatus.OK
    print(f"{config.path}: project {config.project.name!r}, {len(config.workers)} workers, OK")
    for name in start_order(config):
        worker = config.workers[name]
        target = worker.run if worker.run else " ".join(worker.command or ())
        limit = worker.limits.memory_limit_bytes
        memory = format_bytes(limit) if limit else "no limit"
        runtime = _duration(worker.limits.max_runtime_s) if worker.limits.max_runtime_s else "no limit"
        port = worker.limits.health_port
        ports = ""
        most = worker.most_copies
        if port:
            ports = f", health :{port}" + (f"-{port + most - 1}" if most > 1 else "")
        copies = f", {worker.instances} copies" if worker.instances > 1 else ""
        if ports and worker.limits.health_tls_cert:
            ports += " https"
        if worker.listen is not None:
            copies += f", listen {worker.listen}"
        grace = worker.limits.grace_s
        print(f"  {name}: {target} (memory {memory}, max runtime {runtime}, grace {grace:g}s{ports}{copies})")
        if worker.autoscale is not None:
            print(f"    autoscale: {worker.autoscale.describe()}")
            print(f"    {fixed_count_note(worker)}")
    return ExitStatus.OK


def fixed_count_note(worker: WorkerConfig) -> str:
    """What the engines without autoscaling run for an autoscaled worker, in one line."""
    rule = worker.autoscale
    assert rule is not None
    return (
        f"deploy: systemd and supervisord run a fixed {worker.instances} (they cannot scale on a metric);"
        f" kubernetes gets a HorizontalPodAutoscaler {rule.min}..{rule.max} on {rule.metric}"
    )
