"""`python -m amago2`: the command line of amago2.cli."""

import sys

from amago2.cli import main

sys.exit(main())
