"""``python -m powergrid``: the command line (see :mod:`powergrid.cli`)."""

import sys

from powergrid.cli import main

sys.exit(main())
