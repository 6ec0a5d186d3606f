"""stjax: fine-tune aligned LLMs in JAX without losing their safety alignment."""

__version__ = "0.1.0"


def generate(*args, **kwargs):
    """Batched generation with a KV cache; see `stjax.generation.generate`."""
    from stjax.generation import generate as _generate

    return _generate(*args, **kwargs)
