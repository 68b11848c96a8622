"""An argparse parser whose errors are one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..reasons import ExitStatus


class CommandParser(argparse.ArgumentParser):
    """``ArgumentParser`` that reports a bad flag as one line, not usage + error.

    The line names the command, the problem and where to look:
    ``procguard run: unrecognized arguments: --bogus (see 'procguard run --help')``.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see '{self.prog} --help')\n")
        raise SystemExit(ExitStatus.USAGE)
