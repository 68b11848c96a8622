"""``procguard deploy systemd|supervisor|kubernetes|prometheus``: write engine files from procguard.toml.

Nothing is written when the config or the timeout/memory budget is wrong:
the render is complete (and checked) before the first file is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..config import load_config
from ..reasons import ExitStatus

logger = logging.getLogger(__name__)


def configure_deploy(parser: argparse.ArgumentParser) -> None:
    """Flags of ``procguard deploy``."""
    parser.add_argument(
        "target", choices=("systemd", "supervisor", "kubernetes", "prometheus"),
        help="the engine to generate for (prometheus: a scrape config and alert rules)",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="procguard.toml (default: ./procguard.toml)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="directory to write into (default: deploy/TARGET next to the config); '-' prints to stdout",
    )
    parser.add_argument(
        "--user", help="systemd/supervisord: the user the workers run as (systemd default: DynamicUser)"
    )
    parser.add_argument(
        "--venv", metavar="PATH", help="systemd/supervisord: absolute path of the virtualenv on the target"
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="where the config's directory is on the target; relative cwd values resolve against it "
        "(default: the config's directory here)",
    )
    parser.add_argument("--image", metavar="IMG", help="kubernetes: the container image")
    parser.add_argument("--namespace", metavar="NS", help="kubernetes: the namespace")
    parser.add_argument(
        "--credentials-file",
        metavar="PATH",
        help="prometheus: the file holding the bearer token on the Prometheus host "
        "(default: each worker's health_token_file)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        help="prometheus: the CA certificate that signed the health certificates "
        "(default: each worker's health_tls_cert, for a self-signed certificate)",
    )
    parser.add_argument(
        "--server-name", metavar="NAME", help="prometheus: the name the health certificates are issued for"
    )


def run_deploy(args: argparse.Namespace) -> int:
    """Render, check the budget, then write (or print) the files; then say what would not work as
    generated (stderr, one line each) and what to run next."""
    from ..deploy import all_settings, host_paths, render, write_files
    from ..deploy.advice import deploy_warnings, next_steps
    from .colour import YELLOW, paint, wanted

    config = load_config(args.config)
    if args.target == "prometheus":
        from ..deploy.prometheus import options_from, render_prometheus

        flags = {key: getattr(args, key) for key in ("credentials_file", "ca_file", "server_name")}
        files = render_prometheus(config, options_from(flags))
        warnings: list[str] = []
        settings: dict[str, Any] = {}
    else:
        flags = {key: getattr(args, key) for key in ("user", "venv", "workdir", "image", "namespace")}
        settings = all_settings(config, flags)
        files = render(args.target, config, settings)
        workdir, procguard = host_paths(args.target, config, settings)
        warnings = deploy_warnings(args.target, config, settings, workdir=workdir, procguard=procguard)
        from ..deploy.listen_note import listen_notes

        for note in listen_notes(args.target, config):
            sys.stderr.write(f"procguard deploy {args.target}: note: {note}\n")
    on = wanted(sys.stderr)

    def warn() -> None:  # once the files are out: a failed write stays one line
        for line in warnings:
            sys.stderr.write(paint(f"procguard deploy: warning: {line}", YELLOW, on=on) + "\n")

    if args.output == "-":
        for record in files:
            sys.stdout.write(f"# ---- {record.filename}\n{record.text}")
        warn()
        return ExitStatus.OK
    out_dir = args.output or str(config.path.parent / "deploy" / args.target)
    label = "-o" if args.output else "output directory"
    written = write_files(files, out_dir, label=label)
    for path in written:
        print(path)
    warn()
    steps = next_steps(args.target, config, settings, written)
    if steps:
        print("next:")
        for step in steps:
            print(f"  {step}")
    return ExitStatus.OK
