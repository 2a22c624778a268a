"""`python -m slimeseg` = the `slimeseg` command."""

import sys

from .cli import main

sys.exit(main())
