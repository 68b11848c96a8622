"""``procguard deploy systemd|supervisor|kubernetes``: write engine files from procguard.toml.

Nothing is written when the config or the timeout/memory budget is wrong:
the render is complete (and checked) before the first file is written.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import load_config
from ..reasons import ExitStatus

logger = logging.getLogger(__name__)


def configure_deploy(parser: argparse.ArgumentParser) -> None:
    """Flags of ``procguard deploy``."""
    parser.add_argument(
        "target", choices=("systemd", "supervisor", "kubernetes"), help="the engine to generate for"
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


def run_deploy(args: argparse.Namespace) -> int:
    """Render, check the budget, then write (or print) the files."""
    from ..deploy import all_settings, render, write_files

    config = load_config(args.config)
    flags = {key: getattr(args, key) for key in ("user", "venv", "workdir", "image", "namespace")}
    settings = all_settings(config, flags)
    files = render(args.target, config, settings)
    from ..deploy.listen_note import listen_notes

    for note in listen_notes(args.target, config):
        sys.stderr.write(f"procguard deploy {args.target}: note: {note}\n")
    if args.output == "-":
        for record in files:
            sys.stdout.write(f"# ---- {record.filename}\n{record.text}")
        return ExitStatus.OK
    out_dir = args.output or str(config.path.parent / "deploy" / args.target)
    label = "-o" if args.output else "output directory"
    for path in write_files(files, out_dir, label=label):
        print(path)
    return ExitStatus.OK
