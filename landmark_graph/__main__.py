"""``python -m landmark_graph``: the ``landmark-graph`` command."""

import sys

from .engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
