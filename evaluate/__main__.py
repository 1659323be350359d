"""Entry point of ``python -m evaluate``; see evaluate/cli.py for the flags."""

import signal
import sys

from evaluate.cli import main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# SIGTERM stops a run as Ctrl-C does, so the decode worker pool is shut down instead of
# being orphaned when a scheduler or `timeout` ends the process.
signal.signal(signal.SIGTERM, _interrupt)
sys.exit(main())
