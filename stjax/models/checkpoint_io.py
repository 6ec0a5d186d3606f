"""Hugging Face safetensors checkpoints in and out.

Loading builds the model abstractly (no memory), computes each parameter's target
sharding from its logical axes, then reads one tensor at a time from disk and places
only each device's slice, so no full float32 copy of the model ever exists on one
device. Saving gathers one tensor at a time and writes Hub-format shards + index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from stjax.errors import UserError
from stjax.fileio import atomic_directory
from stjax.hub import local_dir
from stjax.models.config import ModelConfig
from stjax.models.layer_stack import is_stacked, layer_paths, layer_slices
from stjax.models.partitioning import DEFAULT_RULES, Rules, checked_sharding, host_array
from stjax.models.transformer import CausalLM

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(UserError):
    """A checkpoint that does not match the model: missing, extra or mis-shaped tensors."""


# ------------------------------------------------------------------ name and layout mapping
def hf_name(path: tuple) -> str:
    """Checkpoint tensor name of a parameter path, e.g. ('layers', 0, 'mlp', 'up_proj', 'weight')."""
    dotted = ".".join(str(p) for p in path)
    if dotted == "embed_tokens":
        dotted = "embed_tokens.weight"
    return dotted if path[0] == "lm_head" else f"model.{dotted}"


def to_model_layout(path: tuple, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF layout ([out, in] matrices, flat heads) -> stjax layout ([in..., out...])."""
    if path[-1] == "weight" and len(shape) >= 2 and path[0] != "embed_tokens":
        fan_in = _fan_in(path, shape)
        expected = (int(np.prod(shape[fan_in:])), int(np.prod(shape[:fan_in])))
        _check_shape(path, tensor.shape, expected)
        return tensor.T.reshape(shape)
    _check_shape(path, tensor.shape, (int(np.prod(shape)),) if path[-1] == "bias" else shape)
    return tensor.reshape(shape)


def to_hf_layout(path: tuple, array: np.ndarray) -> np.ndarray:
    if path[-1] == "weight" and array.ndim >= 2 and path[0] != "embed_tokens":
        fan_in = _fan_in(path, array.shape)
        return array.reshape(int(np.prod(array.shape[:fan_in])), -1).T
    return array.reshape(-1) if path[-1] == "bias" else array


def _fan_in(path: tuple, shape: tuple[int, ...]) -> int:
    """How many leading kernel dims are inputs: o_proj contracts (heads, head_dim)."""
    return 2 if path[-2] == "o_proj" else 1


def _check_shape(path, got, expected):
    if tuple(got) != tuple(expected):
        raise CheckpointError(f"tensor '{hf_name(path)}' has shape {tuple(got)}, expected {tuple(expected)}")


# ------------------------------------------------------------------ reading
class SafetensorsReader:
    """Tensor name -> numpy array over a single file or an index of shards."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        single = self.directory / SINGLE_FILE
        if index.is_file():
            try:
                self.files = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index}: expected a JSON object with a 'weight_map'") from None
        elif single.is_file():
            with _opened(single) as f:
                self.files = {name: SINGLE_FILE for name in f.keys()}
        else:
            raise CheckpointError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE} found")
        self._open: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self.files)

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"{self.directory}: tensor '{name}' is missing")
        file = self.files[name]
        if file not in self._open:
            self._open[file] = _opened(self.directory / file)
        try:
            return self._open[file].get_tensor(name)
        except Exception as e:  # a file cut short after its header
            raise CheckpointError(f"{self.directory / file}: tensor '{name}' cannot be read "
                                  f"({str(e).splitlines()[0][:120]}); the file is truncated or corrupt") from None


def _opened(file: Path):
    """safe_open, with a truncated, corrupt or missing file as one line."""
    if not file.is_file():
        raise CheckpointError(f"{file}: not found (named by the checkpoint's index)")
    try:
        return safe_open(file, framework="numpy")
    except Exception as e:  # SafetensorError, OSError
        raise CheckpointError(f"{file}: not a readable safetensors file ({str(e).splitlines()[0][:120]}); "
                              "the file is truncated or corrupt") from None


def place(array: np.ndarray, sharding, dtype) -> jax.Array:
    """Puts a host array on devices, each device converting only its own slice."""
    dtype = np.dtype(dtype)
    return jax.make_array_from_callback(
        array.shape, sharding, lambda index: np.ascontiguousarray(array[index]).astype(dtype)
    )


def load_into(
    model_factory: Callable[[], CausalLM],
    tensors: Callable[[str], np.ndarray],
    *,
    mesh: Mesh | None,
    rules: Rules,
    available: set[str] | None = None,
    source: str = "checkpoint",
) -> CausalLM:
    """Builds `model_factory()` abstractly and fills every parameter from `tensors(name)`.

    `source` names the checkpoint in error messages.
    """
    abstract = nnx.eval_shape(model_factory)
    graphdef, state = nnx.split(abstract)
    device = SingleDeviceSharding(jax.devices()[0])

    def read(path, shape):
        name = hf_name(path)
        if available is not None and name not in available:
            raise CheckpointError(f"{source}: tensor '{name}' is missing")
        try:
            return to_model_layout(path, tensors(name), shape)
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None

    for path, var in nnx.to_flat_state(state):
        shape, dtype = var.shape, var.dtype
        if is_stacked(path):  # scanned layers: the Hub's per-layer tensors, stacked (in the file's dtype)
            array = np.stack([read(p, shape[1:]) for p in layer_paths(path, shape[0])])
        else:
            array = read(path, shape)
        sharding = (
            device if mesh is None
            else checked_sharding(shape, var.logical_axes, mesh, rules, what=f"parameter {hf_name(path)}")
        )
        var.set_value(place(array, sharding, dtype))
    return nnx.merge(graphdef, state)


def runtime_options(dtype=jnp.float32, compute_dtype=None, remat: str = "none", attention: str = "auto",
                    scan_layers: bool = False) -> dict:
    """The ModelConfig fields a loader takes from its caller rather than the checkpoint."""
    return dict(param_dtype=jnp.dtype(dtype).name, compute_dtype=jnp.dtype(compute_dtype or dtype).name,
                remat=remat, attention=attention, scan_layers=bool(scan_layers))


def from_pretrained(
    path: str | Path,
    *,
    dtype=jnp.float32,
    compute_dtype=None,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    remat: str = "none",
    attention: str = "auto",
    scan_layers: bool = False,
) -> CausalLM:
    """Loads a Hub-format directory (config.json + safetensors), or a Hub id through the
    Hugging Face cache, onto the mesh.

    dtype is the parameter storage dtype; compute_dtype (default: dtype) the activations'.
    """
    path = local_dir(str(path))
    config = ModelConfig.from_pretrained(path, **runtime_options(dtype, compute_dtype, remat, attention, scan_layers))
    reader = SafetensorsReader(path)
    return load_into(lambda: CausalLM(config, rngs=nnx.Rngs(0)), reader.get,
                     mesh=mesh, rules=rules, available=reader.names(), source=str(path))


# ------------------------------------------------------------------ writing
def hf_tensors(model: CausalLM, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """(checkpoint name, host array in HF layout), one parameter at a time (a stacked
    parameter of scanned layers one layer at a time: never a whole stack on the host)."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        for layer_path, part in layer_slices(path, var.get_value()):
            array = host_array(part)
            if dtype is not None:
                array = array.astype(np.dtype(dtype))
            yield hf_name(layer_path), np.ascontiguousarray(to_hf_layout(layer_path, array))


def save_pretrained(
    model: CausalLM,
    out_dir: str | Path,
    *,
    dtype=None,
    tokenizer=None,
    max_shard_bytes: int = 5 * 2**30,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Writes config.json + safetensors shards (+ index) that transformers loads as is, with
    the tokenizer and `extra_files` (name -> text: a model card, generation_config.json).

    The directory appears atomically: it is written next to its final place and renamed,
    so an interrupted save never leaves a half-written checkpoint under `out_dir`.
    Only process 0 writes; every process must call it (gathers are collective).
    """
    out_dir = Path(out_dir)
    config = model.config
    if dtype is not None:
        config = config.replace(param_dtype=jnp.dtype(dtype).name)
    write = jax.process_index() == 0
    tensors = hf_tensors(model, dtype)
    if not write:  # gathers are collective: other processes still walk every tensor
        for _ in tensors:
            pass
        return out_dir
    with atomic_directory(out_dir) as staging:
        shard_names: list[list[str]] = []  # tensor names per written shard
        current: dict[str, np.ndarray] = {}
        current_bytes = 0
        for name, array in tensors:
            if current and current_bytes + array.nbytes > max_shard_bytes:
                _write_part(staging, len(shard_names), current)
                shard_names.append(list(current))
                current, current_bytes = {}, 0
            current[name] = array
            current_bytes += array.nbytes
        _write_part(staging, len(shard_names), current)
        shard_names.append(list(current))
        weight_map = {}
        for i, names in enumerate(shard_names):
            final = SINGLE_FILE if len(shard_names) == 1 else f"model-{i + 1:05d}-of-{len(shard_names):05d}.safetensors"
            os.replace(staging / f"part-{i}.safetensors", staging / final)
            weight_map.update(dict.fromkeys(names, final))
        if len(shard_names) > 1:
            (staging / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
        (staging / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return out_dir


def _write_part(staging: Path, index: int, tensors: dict[str, np.ndarray]) -> None:
    save_file(tensors, str(staging / f"part-{index}.safetensors"), metadata={"format": "pt"})
