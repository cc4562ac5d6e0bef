import sys

from amago2.cli import main

sys.exit(main())
