"""``python -m qcompile``: the command line (`qcompile.cli`)."""

import sys

from qcompile.cli import main

if __name__ == "__main__":
    sys.exit(main())
