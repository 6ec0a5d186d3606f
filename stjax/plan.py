"""`python -m stjax.plan`: an alias of `stjax plan` (see `stjax.cli`)."""

import sys

from stjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("plan", sys.argv[1:]))
