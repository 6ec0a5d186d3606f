"""`python -m stjax.cli <command>`: the same as `stjax <command>`."""

import sys

from stjax.cli import main

sys.exit(main())
