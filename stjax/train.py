"""`python -m stjax.train`: an alias of `stjax train` (see `stjax.cli`); without arguments it
says so and runs `stjax demo`, the embedded default run."""

import sys

from stjax.cli import run_command

if __name__ == "__main__":
    if len(sys.argv) == 1:
        print("python -m stjax.train: no --config given: running `stjax demo` (PACT end to end on the toy world, "
              "offline, CPU); `stjax train --config X.yaml` fine-tunes from a config", flush=True)
        sys.exit(run_command("demo", []))
    sys.exit(run_command("train", sys.argv[1:]))
