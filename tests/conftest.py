"""Test set-up: 8 fake CPU devices (set before jax is imported) and tiny HF checkpoints."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile  # noqa: E402

# Toy assets are built into a throwaway cache, never the user's.
os.environ.setdefault("STJAX_CACHE", tempfile.mkdtemp(prefix="stjax-test-cache-"))
