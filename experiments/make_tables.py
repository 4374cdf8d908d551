"""Our results beside the paper's numbers: ``python experiments/make_tables.py PATH ... --out DIR``.

A thin command over ``nnn.paper`` (see ``nnn.paper.cli`` for the options and
``nnn.paper.report`` for what is written); runs from any directory where ``nnn`` is installed.
"""

import sys

from nnn.paper.cli import main

if __name__ == "__main__":
    sys.exit(main())
