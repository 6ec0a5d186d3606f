"""stjax: fine-tune aligned LLMs in JAX without losing their safety alignment.

The layers, bottom up (each imports only from those below it; `docs/architecture.md`):
leaves (errors, configlib, fileio, locations, plotting, losses, objective, distributed) ->
models -> data -> generation, lora, assets -> pact -> training, planning -> evaluation ->
toy (a client of the library) -> cli (the `stjax` command and its `python -m` aliases).
"""

__version__ = "0.1.0"
