"""`python -m stjax.eval`: an alias of `stjax eval` (see `stjax.cli`)."""

import sys

from stjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("eval", sys.argv[1:]))
