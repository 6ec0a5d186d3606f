"""`python -m stjax.report`: an alias of `stjax report` (see `stjax.cli`)."""

import sys

from stjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("report", sys.argv[1:]))
