"""What every launcher shares: user errors in one line, and a log without repeated noise.

``cli.run(main)`` replaces ``absl.app.run(main)``: an unknown ``--config.a.b`` field, or a
``ValueError``/``FileNotFoundError``/``FileExistsError``/``NotADirectoryError`` raised by
``main`` (a bad config, a missing file, a workdir that is a file) ends the program with one
line ``FATAL: <message>`` on stderr and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import logging as std_logging
import sys
from collections.abc import Callable, Sequence

from absl import app, logging

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def fail(message: str) -> None:
    print(f"FATAL: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _parse_flags(argv: Sequence[str]) -> list[str]:
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # ml_collections.config_flags: an unknown field.
        overrides = [a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]]
        fail(f"Unknown config field {str(e).strip(chr(34))} in {' '.join(overrides)}.")


class _QuietLog(std_logging.Filter):
    """Drops orbax's INFO chatter (a dozen lines per checkpoint) and repeats of a warning."""

    def __init__(self):
        super().__init__()
        self._warned: set[str] = set()

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno < std_logging.WARNING:
            return "/orbax/" not in record.pathname
        message = record.getMessage()
        if message in self._warned:
            return False
        self._warned.add(message)
        return True


def run(main: Callable[[Sequence[str]], None]) -> None:
    """``absl.app.run(main)`` with one-line user errors and a quiet log."""

    def checked(argv: Sequence[str]) -> None:
        logging.get_absl_handler().addFilter(_QuietLog())
        try:
            main(argv)
        except USER_ERRORS as e:
            fail(str(e))

    app.run(checked, flags_parser=_parse_flags)
