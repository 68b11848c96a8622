"""An argparse parser whose errors are one line and exit status 2."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from ..reasons import ExitStatus
from .help_width import sized


class CommandParser(argparse.ArgumentParser):
    """``ArgumentParser`` that reports a bad flag as one line, not usage + error.

    The line names the command, the problem and where to look:
    ``procguard run: unrecognized arguments: --bogus (see 'procguard run --help')``.
    Its help formatter is told its width (:mod:`.help_width`), so the
    parser loads no shutil.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", sized())
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        from .colour import error

        error(f"{self.prog}: {message} (see '{self.prog} --help')")
        raise SystemExit(ExitStatus.USAGE)
