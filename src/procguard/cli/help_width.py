"""argparse help formatters told their width, so that shutil never loads.

argparse builds a help formatter on every ``add_argument`` (to check the
metavar), and a formatter given no width asks ``shutil.get_terminal_size``,
whose import brings ``bz2`` and ``lzma`` with their C libraries: 0.7 MB of
RSS in every procguard process that parses a command line, the long-lived
supervisor and each runner included, for help text that is
almost never printed. :func:`sized` hands argparse the same width it
would have found: ``$COLUMNS``, else the terminal's, else 80, minus 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys


def help_width() -> int:
    """The width argparse would use: ``$COLUMNS``, else stdout's terminal, else 80; minus 2."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns if columns > 0 else 80) - 2


def sized(
    formatter: type[argparse.HelpFormatter] = argparse.HelpFormatter,
) -> functools.partial[argparse.HelpFormatter]:
    """``formatter`` with its width given: use it as a parser's ``formatter_class``."""
    return functools.partial(formatter, width=help_width())
