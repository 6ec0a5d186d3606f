"""Loading a PEFT LoRA adapter into a model: the inverse of `stjax.lora.save_peft_adapter`.

Evaluating the adapter a fine-tuning run exported (rather than a merged copy) keeps one
base checkpoint on disk for many runs, and it also loads adapters trained by PEFT itself,
which use the same file layout.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file

from stjax.fileio import read_json_object
from stjax.lora import ALL_LINEAR, TARGETS, adapted_projections, apply_lora
from stjax.models.checkpoint_io import CheckpointError, hf_name
from stjax.models.layer_stack import layer_paths
from stjax.models.transformer import CausalLM

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def read_adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json, refusing the PEFT variants the model's LoRA does not implement."""
    path = adapter_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{adapter_dir}: no {CONFIG_FILE} (expected a PEFT LoRA adapter directory)")
    config = read_json_object(path, CheckpointError)
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise CheckpointError(f"{path}: no '{key}' (expected a PEFT LoRA adapter config)")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type {config['peft_type']!r} is not LORA")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise CheckpointError(f"{path}: {flag}=true is not supported")
    targets = config.get("target_modules")
    if targets != ALL_LINEAR and (not isinstance(targets, list) or not set(targets) <= set(TARGETS)):
        raise CheckpointError(f"{path}: target_modules must be {ALL_LINEAR!r} or a list of {', '.join(TARGETS)}, "
                              f"got {targets!r}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{path}: per-module rank_pattern/alpha_pattern is not supported")
    return config


def load_peft_adapter(model: CausalLM, adapter_dir: str | Path) -> CausalLM:
    """Attaches the adapter's LoRA matrices to `model` in place (dropout off) and returns it.

    PEFT stores torch layouts, lora_A [r, in] and lora_B [out, r]; the model keeps
    A [in..., r] and B [r, out...] with heads as their own dimensions.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{adapter_dir}: no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as e:  # safetensors' own errors on a truncated or foreign file
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    apply_lora(model, rank=int(config["r"]), alpha=float(config["lora_alpha"]), dropout=0.0,
               targets=config["target_modules"], rslora=bool(config.get("use_rslora")))
    used = set()
    for path, projection in adapted_projections(model):
        a, b = projection.lora.a, projection.lora.b
        stacked = projection.stack is not None  # scanned layers: one row per layer's tensors
        a_shape, b_shape = a.shape[stacked:], b.shape[stacked:]
        rank, n_in, n_out = a_shape[-1], int(np.prod(a_shape[:-1])), int(np.prod(b_shape[1:]))
        layers = layer_paths(path, projection.stack) if stacked else [path]
        for var, part, shape in ((a, "lora_A", (n_in, rank)), (b, "lora_B", (rank, n_out))):
            keys = ["base_model.model." + hf_name((*p, "weight"))[: -len(".weight")] + f".{part}.weight" for p in layers]
            _assign(var, np.stack([_input_major(tensors, key, shape, weights_path) for key in keys]))
            used.update(keys)
    unused = sorted(set(tensors) - used)
    if unused:
        raise CheckpointError(f"{weights_path}: {len(unused)} tensor(s) match no adapted module, "
                              f"e.g. '{unused[0]}'")
    return model


def _input_major(tensors: dict, key: str, shape: tuple[int, int], source: Path) -> np.ndarray:
    """A torch Linear-layout tensor, transposed to the model's input-major 2-D layout."""
    if key not in tensors:
        raise CheckpointError(f"{source}: tensor '{key}' is missing")
    value = tensors[key].T
    if value.shape != shape:
        raise CheckpointError(f"{source}: tensor '{key}' has shape {tensors[key].shape}, expected {shape[::-1]}")
    return value


def _assign(var, value: np.ndarray) -> None:
    """Sets an adapter matrix, keeping the dtype and the sharding apply_lora gave it."""
    current = var[...]
    var.set_value(jax.device_put(value.reshape(current.shape).astype(current.dtype), current.sharding))
