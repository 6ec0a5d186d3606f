"""`stjax <command> ...`: the one command-line front end.

Each command lives in its own module here and is imported only when it runs, so
`stjax report` (JSON and matplotlib) starts without jax. The old `python -m stjax.X`
entry points are thin aliases of these commands.
"""

from __future__ import annotations

import importlib
import sys

from stjax.cli.common import run_cli

# command -> (module under stjax.cli, one line of help)
COMMANDS = {
    "demo": ("demo", "PACT end to end on the embedded toy world: offline, CPU, minutes"),
    "train": ("train", "fine-tune a model from a YAML config (SFT, PACT, baselines)"),
    "safety-tokens": ("safety_tokens", "PACT stage 1: the safety tokens of an aligned model vs its base"),
    "export": ("export", "export a saved checkpoint of a run (adapter, merged or full model) with its model card"),
    "eval": ("eval", "safety and utility benchmarks of a (fine-tuned) model"),
    "report": ("report", "compare eval runs: a Markdown table and PNG plots (no jax needed)"),
    "plan": ("plan", "will a training config fit a TPU slice, and what will it cost"),
    "fetch": ("fetch", "download and convert a known model (SmolLM2-135M-Instruct)"),
    "convert-gguf": ("convert_gguf", "a llama-architecture GGUF file -> a Hugging Face model directory"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: stjax <command> [options]   (stjax <command> --help for its options)",
             "every command also takes --quiet (warnings only), --verbose (debug messages) and --debug (tracebacks)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def run_command(name: str, argv: list[str]) -> int:
    """Runs one command with its arguments; user errors exit 2 with one line."""
    module = importlib.import_module(f"stjax.cli.{COMMANDS[name][0]}")
    return run_cli(f"stjax {name}", module.main, argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from stjax import __version__

        print(f"stjax {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"stjax: error: unknown command '{argv[0]}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])
