"""Entry point of ``python -m evaluate``; see evaluate/cli.py for the flags."""

import sys

from evaluate.cli import main

sys.exit(main())
