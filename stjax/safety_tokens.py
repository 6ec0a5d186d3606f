"""`python -m stjax.safety_tokens`: an alias of `stjax safety-tokens` (see `stjax.cli`)."""

import sys

from stjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("safety-tokens", sys.argv[1:]))
