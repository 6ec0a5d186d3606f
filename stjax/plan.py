"""`python -m stjax.plan --config X.yaml [--topology v5e-8]`: will a run fit, and what will it cost?

Per-chip HBM for the config's mesh on a TPU topology, by part: weights (sharded by the
same logical-axis rules the trainer uses), gradients and Adam state (adapters only with
LoRA), activations under the configured remat policy, the PACT extras (safety-token
logits; cached reference arrays in the batch, or the frozen weight copy an online
reference needs with full fine-tuning), FSDP all-gather buffers and the loss's logit
chunk. Then step time and chip-hours from FLOPs at a stated MFU.

The model's sizes come from `model.path`/config.json; a Hub directory that is not on this
machine is fine for the models embedded below (Llama 3.1 8B, Qwen2.5 7B, base and
instruct), or give `--model-config file.json`.

Numbers are estimates (see docs/tpu.md for how they compare). Where libtpu is installed
(`pip install 'stjax[tpu]'`, no TPU needed), `--compile` also compiles the real train step
for the topology (`jax.experimental.topologies`) and reports XLA's own memory figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

from stjax.cli import run_cli
from stjax.configlib import ConfigKeyError

GiB = 2**30

# ------------------------------------------------------------------ hardware
@dataclasses.dataclass(frozen=True)
class Chip:
    family: str
    hbm_gib: float  # per chip
    peak_tflops: float  # dense bf16 per chip
    cores_in_name: int  # v4-8 / v5p-8 count TensorCores (2 per chip); v5e / v6e count chips
    compile_name: str  # jax.experimental.topologies name prefix
    compile_kwargs: tuple = ()


CHIPS = {
    "v4": Chip("v4", 32, 275, 2, "v4", (("chip_config_name", "megacore"),)),
    "v5e": Chip("v5e", 16, 197, 1, "v5e"),
    "v5p": Chip("v5p", 95, 459, 2, "v5p", (("chip_config_name", "megacore"),)),
    "v6e": Chip("v6e", 32, 918, 1, "v6e"),
}

# Compile-only topologies (chips -> physical shape) for the single-host slices.
_SHAPES = {("v4", 4): "2x2x1", ("v5p", 4): "2x2x1", ("v5e", 1): "1x1", ("v5e", 4): "2x2", ("v5e", 8): "2x4",
           ("v6e", 1): "1x1", ("v6e", 4): "2x2", ("v6e", 8): "2x4", ("v4", 8): "2x2x2", ("v5p", 8): "2x2x2"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. v5e-8
    chip: Chip
    chips: int

    @property
    def hbm_bytes(self) -> float:
        return self.chip.hbm_gib * GiB


def parse_topology(name: str) -> Topology:
    """'v5e-8' (or gcloud's 'v5litepod-8') -> 8 v5e chips; 'v4-8' -> 4 v4 chips (8 TensorCores)."""
    family, _, count = name.lower().partition("-")
    family = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}.get(family, family)
    if family not in CHIPS or not count.isdigit() or int(count) < 1:
        raise ConfigKeyError(f"--topology {name!r}: expected <family>-<size> with family one of "
                             f"{', '.join(CHIPS)} (e.g. v5e-8, v4-8, v5p-8, v6e-8)")
    chip = CHIPS[family]
    chips = max(1, int(count) // chip.cores_in_name)
    return Topology(name, chip, chips)


# ------------------------------------------------------------------ models
# config.json of the reference models, so a plan needs no download.
_LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 128000, "torch_dtype": "bfloat16",
}
_QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
    "use_sliding_window": False, "max_window_layers": 28, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 151643, "torch_dtype": "bfloat16",
}
KNOWN_MODELS = {
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B,
    "Qwen/Qwen2.5-7B": {**_QWEN25_7B, "max_position_embeddings": 131072},
}


def model_hf_config(path: str, model_config: str | None = None) -> tuple[dict, str]:
    """(config.json dict, where it came from): --model-config, the model directory, or the
    embedded config of a known model whose name ends the path."""
    if model_config:
        return json.loads(Path(model_config).read_text()), model_config
    from stjax.toy.build import resolve

    if path.startswith("toy://") or (Path(path) / "config.json").is_file():
        local = Path(resolve(path)) / "config.json"
        return json.loads(local.read_text()), str(local)
    for repo, hf in KNOWN_MODELS.items():
        if path.rstrip("/").lower().endswith(repo.split("/")[-1].lower()):
            return dict(hf), f"embedded config of {repo}"
    raise ConfigKeyError(f"model.path {path!r}: no config.json there and not a known model "
                         f"({', '.join(KNOWN_MODELS)}); give --model-config config.json")


# ------------------------------------------------------------------ the estimate
@dataclasses.dataclass
class Estimate:
    topology: Topology
    mesh: dict[str, int]
    memory: dict[str, float]  # part -> bytes per chip
    params_total: int
    params_trained: int
    tokens_per_step: float  # mean padded tokens in a global batch
    seq_len_source: str
    steps: int
    examples: int | None
    flops_per_step: float
    mfu: float
    step_seconds: float
    cache_seconds: float  # ref: cached, the one-off reference pass
    notes: list[str]
    errors: list[str]

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return not self.errors and self.total_bytes <= FIT_FRACTION * self.topology.hbm_bytes

    @property
    def chip_hours(self) -> float:
        return (self.steps * self.step_seconds + self.cache_seconds) * self.topology.chips / 3600


FIT_FRACTION = 0.9  # of HBM; the rest: runtime, program, fragmentation, XLA scratch


def _resolve_mesh(mesh, chips: int) -> tuple[dict[str, int], list[str]]:
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    known = math.prod(v for v in sizes.values() if v != -1)
    errors = []
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        errors.append("mesh: at most one of data/fsdp/tensor may be -1")
        free = free[:1]
    if free:
        sizes[free[0]] = max(1, chips // known)
    if math.prod(sizes.values()) != chips:
        errors.append(f"mesh: data*fsdp*tensor = {math.prod(sizes.values())} but the topology has {chips} chips")
    return sizes, errors


def _shards(shape, logical_axes, mesh: dict[str, int]) -> tuple[int, int, str | None]:
    """(ways a parameter is split, of which over fsdp, error) under the trainer's rules; the
    error names a dimension that does not divide its mesh axes."""
    from stjax.models.partitioning import DEFAULT_RULES

    total, fsdp = 1, 1
    for dim, (size, name) in enumerate(zip(shape, logical_axes or (None,) * len(shape))):
        axes = DEFAULT_RULES.get(name) if name else None
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        parts = math.prod(mesh[a] for a in axes)
        if size % parts:
            return 1, 1, f"dimension {dim} ('{name}', size {size}) does not divide mesh axes {axes} of size {parts}"
        total *= parts
        fsdp *= mesh["fsdp"] if "fsdp" in axes else 1
    return total, fsdp, None


def abstract_model(model_config, lora, *, for_compile: bool = False):
    """The model (with adapters when LoRA is on), shapes only: (graphdef, trained, rest).
    Remat changes no parameter, only the graph: kept for compiling, dropped for counting."""
    if not for_compile:
        model_config = model_config.replace(remat="none")
    return _abstract_model(model_config, (lora.enabled, lora.rank, lora.alpha, lora.dropout, tuple(lora.targets)))


@functools.lru_cache(maxsize=8)
def _abstract_model(model_config, lora: tuple):
    from flax import nnx

    from stjax.lora import LoraAdapter, LoraParam, adapted_projections
    from stjax.models.transformer import CausalLM

    enabled, rank, alpha, dropout, targets = lora

    def build():
        model = CausalLM(model_config, rngs=nnx.Rngs(0))
        if enabled:
            rngs = nnx.Rngs(params=0)
            for _, projection in adapted_projections(model, targets):
                projection.lora = LoraAdapter(projection, rank, alpha, dropout, rngs)
        return model

    model = nnx.eval_shape(build)
    return nnx.split(model, LoraParam if enabled else nnx.Param, ...)


def _param_bytes(state, mesh) -> tuple[float, int, dict, list[str]]:
    """(bytes per chip, parameter count, {layer: bytes per chip once gathered over fsdp}, errors)."""
    from flax import nnx

    per_chip, count, errors, per_layer = 0.0, 0, [], {}
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param):
            continue
        shape, itemsize = tuple(var.shape), var.dtype.itemsize
        n = math.prod(shape)
        shards, fsdp, error = _shards(shape, getattr(var, "logical_axes", None), mesh)
        if error:
            errors.append(f"parameter {'.'.join(map(str, path))}: {error}")
        per_chip += n * itemsize / shards
        count += n
        if path[0] == "layers":  # gathered over fsdp for the layer's matmuls, still split over tensor
            per_layer[path[1]] = per_layer.get(path[1], 0) + n * itemsize * fsdp / shards
    return per_chip, count, per_layer, errors


def _rows(config, mesh) -> float:
    return config.train.batch_size / config.train.grad_accum / (mesh["data"] * mesh["fsdp"])


def activation_bytes_per_token(model_config, config, mesh) -> dict[str, float]:
    """Bytes per (local) token: saved for the backward pass per layer, and one layer's working set."""
    c = model_config
    t = mesh["tensor"]
    s = 4 if (config.model.compute_dtype or config.model.dtype) == "float32" else 2
    D, F, L = c.hidden_size, c.intermediate_size / t, config.data.max_len
    heads = c.num_heads / t
    q = heads * c.head_dim * s
    kv = (c.num_kv_heads / t if c.num_kv_heads % t == 0 else c.num_kv_heads) * c.head_dim * s
    x, x32 = D * s, D * 4
    scores, probs = heads * L * 4, heads * L * s
    adapters = len(config.lora.targets) if config.lora.enabled else 0
    dropout = adapters * (D * s + D) if config.lora.enabled and config.lora.dropout > 0 else 0
    everything = (x + (x32 + x) + (q + 2 * kv) + (q + kv) + scores + probs + q + x + x + (x32 + x)
                  + 2 * F * s + 2 * F * s + x + dropout)
    saved = {
        "none": everything,
        "full": x,
        "dots": x + (q + 2 * kv) + scores + q + x + 2 * F * s + x,
        "dots_no_batch": x + (q + 2 * kv) + x + 2 * F * s + x,
    }[config.model.remat]
    return {"saved_per_layer": saved, "working": everything, "s": s}


def estimate(config, topology: Topology, model_config, *, seq_len: float | None = None, examples: int | None = None,
             mfu: float = 0.35, safety_tokens: int | None = None) -> Estimate:
    mesh, errors = _resolve_mesh(config.mesh, topology.chips)
    notes: list[str] = []
    lora = config.lora
    _, trained, rest = abstract_model(model_config, lora)
    trained_bytes, n_trained, layers_trained, e1 = _param_bytes(trained, mesh)
    rest_bytes, n_rest, layers_rest, e2 = _param_bytes(rest, mesh)
    layer_gather = max((layers_trained.get(i, 0) + layers_rest.get(i, 0) for i in layers_rest | layers_trained),
                       default=0)
    errors += e1 + e2
    kind = config.loss.kind
    pact = kind in ("pact", "pact_bucket")
    needs_ref = kind != "sft"
    online = needs_ref and config.loss.ref == "online"
    K = safety_tokens or 50  # python -m stjax.safety_tokens' top_k default

    rows = _rows(config, mesh)
    if rows != int(rows) or rows < 1:
        errors.append(f"train.batch_size {config.train.batch_size} / grad_accum {config.train.grad_accum} does not "
                      f"split over data*fsdp = {mesh['data'] * mesh['fsdp']} batch shards")
    tokens = max(rows, 1) * config.data.max_len  # the widest bucket sets the peak
    act = activation_bytes_per_token(model_config, config, mesh)
    layers = model_config.num_layers
    memory = {
        "weights, frozen": rest_bytes,
        "weights, trained" + (" (LoRA adapters)" if lora.enabled else ""): trained_bytes,
        "gradients": trained_bytes * (2 if config.train.grad_accum > 1 else 1),
        "Adam moments (m, v)": 2 * trained_bytes,
        "optimizer update temporaries": trained_bytes,
    }
    if online and not lora.enabled:
        memory["reference weights (online, full fine-tuning)"] = trained_bytes
    memory[f"activations (remat={config.model.remat})"] = tokens * (layers * act["saved_per_layer"] + act["working"])
    memory["final hidden states, batch"] = tokens * (model_config.hidden_size * (4 + 2 * act["s"]) + 17)
    vocab_shard = model_config.vocab_size / mesh["tensor"]
    chunk = config.loss.chunk_tokens / (mesh["data"] * mesh["fsdp"])
    memory["loss logit chunk (f32, x3)"] = chunk * vocab_shard * 4 * 3
    if mesh["fsdp"] > 1:
        head = model_config.hidden_size * vocab_shard * act["s"]
        if not model_config.tie_word_embeddings:  # the input embedding is gathered for its lookup too
            head *= 2
        memory["FSDP all-gather buffers (2 layers + embeddings)"] = 2 * layer_gather + head
    if pact:
        extra = tokens * K * 4 * 6
        if config.loss.ref == "cached":
            extra += tokens * K * 4 * 2
            notes.append(f"ref: cached: {K} safety-token logits x 2 (full and response-only sequences) per response "
                         "token live in host RAM and ride in each batch; one reference pass over the data first")
        else:
            notes.append("ref: online: 2 reference forward passes per step (full and response-only sequences)")
        memory[f"PACT safety-token logits (K={K})"] = extra
    elif needs_ref and online:
        memory["reference outputs (online)"] = tokens * (model_config.hidden_size * act["s"] + 4)

    # FLOPs: 2N per token forward (matmul weights) + attention scores; LoRA skips weight gradients.
    n_matmul = sum(math.prod(v.shape) for path, v in _flat_params(rest) + _flat_params(trained)
                   if path[-1] != "bias" and len(v.shape) >= 2 and path[0] != "embed_tokens")  # kernels, adapters
    if model_config.tie_word_embeddings:
        n_matmul += model_config.vocab_size * model_config.hidden_size
    if seq_len is None:
        seq_len, seq_len_source = float(config.data.max_len), "max_len (worst case; pass --seq-len)"
    else:
        seq_len_source = "given" if isinstance(seq_len, (int, float)) else str(seq_len)
    attention = 4 * layers * seq_len * model_config.num_heads * model_config.head_dim
    forward = 2 * n_matmul + attention
    passes = 2 if lora.enabled else 3  # forward + activation grads (+ weight grads)
    if config.model.remat == "full":
        passes += 1
    elif config.model.remat == "dots_no_batch":
        passes += attention / forward
    if online:
        passes += 2 if pact or kind == "pact_bucket" else 1
    tokens_per_step = config.train.batch_size * seq_len
    flops = passes * forward * tokens_per_step
    peak = topology.chips * topology.chip.peak_tflops * 1e12
    step_seconds = flops / (peak * mfu)
    steps = 0
    cache_seconds = 0.0
    if examples:
        per_epoch = math.ceil(examples / config.train.batch_size)
        steps = config.train.epochs * per_epoch
        if config.train.max_steps is not None:
            steps = min(steps, config.train.max_steps)
        if needs_ref and not online:
            cache_seconds = 2 * forward * examples * seq_len / (peak * mfu)
    return Estimate(topology, mesh, memory, n_trained + n_rest, n_trained, tokens_per_step, seq_len_source, steps,
                    examples, flops, mfu, step_seconds, cache_seconds, notes, errors)


def _flat_params(state):
    from flax import nnx

    return [(path, var) for path, var in nnx.to_flat_state(state) if isinstance(var, nnx.Param)]


# ------------------------------------------------------------------ data size
TFDS_SPLIT_SIZES = {  # the published sizes of the TFDS task sets stjax reads (stjax.data.sources)
    ("glue/sst2", "train"): 67349, ("glue/sst2", "validation"): 872,
    ("ag_news_subset", "train"): 120000, ("ag_news_subset", "test"): 7600,
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319,
}


def count_examples(config) -> int | None:
    """Training examples (after harmful/safety mixing) when every training source is a local
    file or a TFDS set of known size."""
    from stjax.data.sources import read_conversations
    from stjax.toy.build import resolve

    def rows(source):
        if source.tfds is not None:
            n = TFDS_SPLIT_SIZES.get((source.tfds, source.split))
        elif Path(resolve(source.path) if source.path.startswith("toy://") else source.path).is_file():
            n = len(read_conversations(resolve(source.path), without_input=source.without_input))
        else:
            return None
        return min(n, source.limit) if n is not None and source.limit is not None else n

    counts = [rows(s) for s in config.data.train]
    if any(c is None for c in counts):
        return None
    n = sum(counts)
    for ratio, source in ((config.data.harmful_ratio, config.data.harmful), (config.data.safety_ratio, config.data.safety)):
        if source is not None and ratio > 0:
            n += round(ratio * n / (1.0 - ratio))
    return n


def estimate_seq_len(config, template_tokens: int = 40, chars_per_token: float = 4.0) -> float | None:
    """Mean padded batch width: each example's length estimated from its characters, rounded
    up to its bucket (the batch iterator groups examples by bucket)."""
    from stjax.data.batching import bucket_lengths
    from stjax.data.sources import read_conversations
    from stjax.toy.build import resolve

    widths = []
    buckets = bucket_lengths(config.data.max_len, config.data.buckets)
    for source in config.data.train:
        if source.path is None:
            return None
        path = resolve(source.path)
        if not Path(path).is_file():
            return None
        for c in read_conversations(path)[: source.limit]:
            n = template_tokens + sum(len(m.content) for m in c.messages) / chars_per_token
            widths.append(next((b for b in buckets if b >= n), buckets[-1]))
    return sum(widths) / len(widths) if widths else None


# ------------------------------------------------------------------ knobs
def suggestions(config, topology, model_config, base: Estimate, **kwargs) -> list[tuple[str, Estimate]]:
    """Single changes to the config and what each gives."""
    options = []
    chips = topology.chips
    if base.mesh != {"data": 1, "fsdp": chips, "tensor": 1} and chips > 1:
        options.append((f"mesh.data=1 mesh.fsdp={chips} mesh.tensor=1", {"mesh": {"data": 1, "fsdp": chips, "tensor": 1}}))
    if chips % 2 == 0 and base.mesh["tensor"] == 1 and model_config.num_kv_heads % 2 == 0:
        options.append((f"mesh.data=1 mesh.fsdp={chips // 2} mesh.tensor=2",
                        {"mesh": {"data": 1, "fsdp": chips // 2, "tensor": 2}}))
    for remat in ("full", "dots_no_batch", "dots"):
        if config.model.remat != remat:
            options.append((f"model.remat={remat}", {"model": {"remat": remat}}))
    for accum in (2, 4, 8):
        if config.train.batch_size % (accum * config.train.grad_accum) == 0:
            value = config.train.grad_accum * accum
            options.append((f"train.grad_accum={value}", {"train": {"grad_accum": value}}))
    if not config.lora.enabled:
        options.append(("lora.enabled=true", {"lora": {"enabled": True}}))
    if config.model.dtype == "float32":
        options.append(("model.dtype=bfloat16", {"model": {"dtype": "bfloat16", "compute_dtype": "bfloat16"}}))
    results = []
    for text, change in options:
        changed = _replace(config, change)
        try:
            results.append((text, estimate(changed, topology, model_config.replace(remat=changed.model.remat,
                                                                                      param_dtype=changed.model.dtype),
                                           **kwargs)))
        except (ConfigKeyError, ValueError):  # a knob that does not apply is simply not offered
            continue
    return results


def _replace(config, change: dict):
    sections = {}
    for section, values in change.items():
        sections[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **sections)


# ------------------------------------------------------------------ compile-only (libtpu)
def compiled_memory(config, model_config, devices, *, safety_tokens: int = 50) -> dict[str, float]:
    """XLA's memory figures (bytes per device) for the real train step compiled for `devices`
    (a TPU topology's compile-only devices, or local ones)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from stjax.models.partitioning import MESH_AXES
    from stjax.training.objectives import build_objective
    from stjax.training.optimizer import make_optimizer, make_schedule
    from stjax.training.step import (
        Frozen,
        TrainState,
        jit_train_step,
        make_train_step,
        state_sharding,
    )

    mesh_sizes, errors = _resolve_mesh(config.mesh, len(devices))
    if errors:
        raise ConfigKeyError(errors[0])
    mesh = jax.sharding.Mesh(np.array(devices).reshape([mesh_sizes[a] for a in MESH_AXES]), MESH_AXES)
    graphdef, trained, rest = abstract_model(model_config.replace(remat=config.model.remat), config.lora,
                                             for_compile=True)
    kind = config.loss.kind
    ids = np.arange(safety_tokens, dtype=np.int32) if kind in ("pact", "pact_bucket") else None
    weights = np.ones(safety_tokens, np.float32) if ids is not None else None
    objective = build_objective(config.loss, safety_ids=ids, safety_weights=weights, header_len=4)
    online = objective.needs_reference and config.loss.ref == "online"
    schedule = make_schedule(config.optimizer, 1000, 100)
    tx = make_optimizer(config.optimizer, schedule)

    def init(params):
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                          jax.random.key_data(jax.random.key(0)))

    abstract_state = jax.eval_shape(init, trained)
    shardings = state_sharding(abstract_state, mesh)
    from stjax.models.partitioning import state_shardings

    rest_shardings = _rest_shardings(rest, mesh)
    frozen_shardings = Frozen(rest_shardings, state_shardings(trained, mesh) if online and not config.lora.enabled
                              else None)
    frozen = Frozen(rest, trained if online and not config.lora.enabled else None)
    B, L = config.train.batch_size, config.data.max_len
    batch = {"inputs": (B, L, jnp.int32), "targets": (B, L, jnp.int32), "loss_mask": (B, L, jnp.float32),
             "attention_mask": (B, L, jnp.bool_), "response_pos": (B, L, jnp.int32), "example_index": (B, None, jnp.int32)}
    batch = {k: jax.ShapeDtypeStruct((b,) if l is None else (b, l), d) for k, (b, l, d) in batch.items()}
    if objective.needs_reference and not online:
        batch.update(_cached_ref_shapes(kind, B, L, safety_tokens))
    batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    step = jit_train_step(make_train_step(graphdef, objective.loss, tx, grad_accum=config.train.grad_accum,
                                          reference_fn=objective.reference_fn if online else None),
                          shardings, frozen_shardings, batch_sharding)
    compiled = step.lower(abstract_state, frozen, batch).compile()
    stats = compiled.memory_analysis()
    return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
            "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
            "code": stats.generated_code_size_in_bytes,
            "peak": stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes}


def _rest_shardings(rest, mesh):
    """Shardings for the frozen part: parameters by their axes, the rest (dropout keys) replicated."""
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from stjax.models.partitioning import checked_sharding

    def one(path, var):
        axes = getattr(var, "logical_axes", None)
        if isinstance(var, nnx.Param):
            return var.replace(checked_sharding(var.shape, axes or (None,) * len(var.shape), mesh))
        return var.replace(NamedSharding(mesh, PartitionSpec()))

    return nnx.map_state(one, rest)


def _cached_ref_shapes(kind, B, L, K) -> dict:
    import jax
    import jax.numpy as jnp

    shapes = {"pact": ("ref_full", "ref_post"), "pact_bucket": ("ref_full", "ref_post")}.get(kind)
    if shapes:
        out = {k: jax.ShapeDtypeStruct((B, L, K), jnp.float32) for k in shapes}
        if kind == "pact_bucket":
            out.update({k: jax.ShapeDtypeStruct((B, L), jnp.float32) for k in ("ref_full_lse", "ref_post_lse")})
        return out
    return {"ref_logprobs": jax.ShapeDtypeStruct((B, L), jnp.float32)}  # constrained_sft


def topology_devices(topology: Topology):
    """Compile-only TPU devices for the topology (libtpu needed; no TPU)."""
    from jax.experimental import topologies

    shape = _SHAPES.get((topology.chip.family, topology.chips))
    if shape is None:
        raise ConfigKeyError(f"--compile: no compile-only shape known for {topology.name}")
    return topologies.get_topology_desc(f"{topology.chip.compile_name}:{shape}", "tpu",
                                        **dict(topology.chip.compile_kwargs)).devices


# ------------------------------------------------------------------ report
def _gib(x: float) -> str:
    if x >= 0.1 * GiB or x == 0:
        return f"{x / GiB:8.2f} GiB"
    if x >= 0.1 * 2**20:
        return f"{x / 2**20:8.2f} MiB"
    return f"{x / 2**10:8.2f} KiB"


def report(config, est: Estimate, source: str, knobs: list[tuple[str, Estimate]] | None = None,
           compiled: dict | str | None = None, price: float | None = None) -> str:
    t = est.topology
    m = est.mesh
    lines = [
        (f"plan: {config.model.path} ({source}) on {t.name}: {t.chips} x {t.chip.family} chips, "
         f"{t.chip.hbm_gib:g} GiB HBM and {t.chip.peak_tflops:g} bf16 TFLOP/s each"),
        (f"  mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}; "
         f"batch {config.train.batch_size} (grad_accum {config.train.grad_accum}, "
         f"{_rows(config, m):g} rows/chip/micro-batch) x max_len {config.data.max_len}; dtype {config.model.dtype}; "
         f"remat {config.model.remat}; loss {config.loss.kind}"
         + (f" (ref {config.loss.ref})" if config.loss.kind != "sft" else "")
         + (f"; LoRA r={config.lora.rank} on {'/'.join(config.lora.targets)}" if config.lora.enabled else "; full FT")),
        f"  parameters {est.params_total / 1e9:.3f} B, trained {est.params_trained / 1e6:.2f} M",
        "",
        "memory per chip (estimate)",
    ]
    for part, value in est.memory.items():
        lines.append(f"  {part:<52} {_gib(value)}")
    total = est.total_bytes
    lines.append(f"  {'total':<52} {_gib(total)}   ({total / t.hbm_bytes:.0%} of {t.chip.hbm_gib:g} GiB)")
    if isinstance(compiled, dict):
        lines.append(f"  {'XLA compiled for ' + t.name + ': peak':<52} {_gib(compiled['peak'])}   (arguments "
                     f"{compiled['arguments'] / GiB:.2f}, temporaries {compiled['temporaries'] / GiB:.2f} GiB)")
    elif compiled:
        lines.append(f"  XLA compile-only check: {compiled}")
    lines.append("")
    for error in est.errors:
        lines.append(f"ERROR: {error}")
    peak = compiled["peak"] if isinstance(compiled, dict) else total
    if est.errors:
        pass
    elif peak > t.hbm_bytes:
        lines.append(f"WARNING: will NOT fit: {peak / GiB:.1f} GiB per chip > {t.chip.hbm_gib:g} GiB HBM on {t.name}.")
    elif peak > FIT_FRACTION * t.hbm_bytes:
        lines.append(f"WARNING: tight: {peak / GiB:.1f} GiB per chip is over {FIT_FRACTION:.0%} of "
                     f"{t.chip.hbm_gib:g} GiB HBM; XLA scratch and fragmentation may not fit.")
    else:
        lines.append(f"fits: {peak / GiB:.1f} of {t.chip.hbm_gib:g} GiB per chip.")
    if knobs and (est.errors or peak > FIT_FRACTION * t.hbm_bytes):
        lines.append("  knobs (one change each -> total per chip):")
        for text, k in sorted(knobs, key=lambda kv: kv[1].total_bytes):
            verdict = "fits" if k.fits else "no"
            lines.append(f"    {text:<44} {_gib(k.total_bytes)}  {verdict}")
    lines += ["", "time and cost (estimate)"]
    lines.append(f"  tokens/step {est.tokens_per_step:,.0f} (batch x mean padded width, width from "
                 f"{est.seq_len_source})")
    lines.append(f"  FLOPs/step {est.flops_per_step:.3e}; at MFU {est.mfu:.0%}: {est.step_seconds:.3f} s/step")
    for note in est.notes:
        lines.append(f"  {note}")
    if est.steps:
        hours = est.steps * est.step_seconds / 3600
        lines.append(f"  {est.examples} examples x {config.train.epochs} epochs = {est.steps} steps: {hours:.2f} h"
                     + (f" + {est.cache_seconds / 60:.1f} min reference cache" if est.cache_seconds else "")
                     + f" = {est.chip_hours:.2f} chip-hours")
        if price:
            lines.append(f"  at ${price:.2f} per chip-hour: ${est.chip_hours * price:,.2f}")
    else:
        lines.append("  steps unknown (data not local): pass --examples N")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stjax.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--topology", default="v5e-8", help="TPU slice, e.g. v4-8, v5e-8, v5p-8, v6e-8 (default v5e-8)")
    parser.add_argument("--model-config", help="a config.json for the model (default: model.path's, or embedded)")
    parser.add_argument("--seq-len", type=float, help="mean padded batch width for time estimates (default: "
                        "estimated from the data's characters when local, else max_len)")
    parser.add_argument("--examples", type=int, help="training examples (default: counted when the data is local)")
    parser.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilization assumed (default 0.35)")
    parser.add_argument("--safety-tokens", type=int, default=50, help="K, safety tokens (PACT; default 50)")
    parser.add_argument("--price", type=float, help="$ per chip-hour, to print a cost")
    parser.add_argument("--compile", action="store_true",
                        help="also compile the train step for the topology with libtpu (compile-only, no TPU)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=32")
    args = parser.parse_args(argv)

    from stjax.models.config import ModelConfig
    from stjax.training.config import load_train_config

    config = load_train_config(args.config, args.overrides)
    topology = parse_topology(args.topology)
    hf, source = model_hf_config(config.model.path, args.model_config)
    model_config = ModelConfig.from_hf_dict(hf, source=source, param_dtype=config.model.dtype,
                                            compute_dtype=config.model.compute_dtype or config.model.dtype,
                                            remat=config.model.remat)
    seq_len = args.seq_len
    seq_source = None
    if seq_len is None:
        seq_len = estimate_seq_len(config)
        seq_source = "the data (characters / 4 + 40 template tokens, bucketed)" if seq_len else None
    examples = args.examples if args.examples is not None else count_examples(config)
    kwargs = {"seq_len": seq_len, "examples": examples, "mfu": args.mfu, "safety_tokens": args.safety_tokens}
    est = estimate(config, topology, model_config, **kwargs)
    if seq_source:
        est.seq_len_source = seq_source
    knobs = suggestions(config, topology, model_config, est, **kwargs)
    compiled = None
    if args.compile:
        try:
            import libtpu  # noqa: F401
        except ImportError:
            compiled = "unavailable (libtpu is not installed: pip install 'stjax[tpu]')"
        else:
            try:
                compiled = compiled_memory(config, model_config, topology_devices(topology),
                                           safety_tokens=args.safety_tokens)
            except Exception as e:  # noqa: BLE001 - report, keep the estimate
                compiled = f"failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    if args.json:
        print(json.dumps({"topology": topology.name, "mesh": est.mesh, "memory_bytes": est.memory,
                          "total_bytes": est.total_bytes, "hbm_bytes": topology.hbm_bytes, "fits": est.fits,
                          "errors": est.errors, "compiled": compiled, "params": est.params_total,
                          "trained_params": est.params_trained, "flops_per_step": est.flops_per_step,
                          "step_seconds": est.step_seconds, "steps": est.steps, "chip_hours": est.chip_hours},
                         indent=2))
    else:
        print(report(config, est, source, knobs, compiled, args.price))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("stjax.plan", main))
