"""Per-chip memory by part and step time from FLOPs, for a training config on a topology.

Weights are sharded by the same logical-axis rules the trainer uses; gradients and Adam
state cover the trained variables only (adapters with LoRA); activations follow the remat
policy; PACT adds its safety-token logits; FSDP adds all-gather buffers."""

from __future__ import annotations

import dataclasses
import functools
import math

from stjax.lora import expand_targets
from stjax.models.layer_stack import is_matrix
from stjax.models.sections import mesh_rules
from stjax.planning.hardware import Topology


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


PACKED_FILL = 0.9  # how full packed rows are (benchmarks/packing.py measures 0.87-0.91 on SST-2)

def resolve_mesh(mesh, chips: int) -> tuple[dict[str, int], list[str]]:
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


def _shards(shape, logical_axes, mesh: dict[str, int], rules) -> tuple[int, int, str | None]:
    """(ways a parameter is split, of which over fsdp, error) under the run's sharding rules;
    the error names a dimension that does not divide its mesh axes."""
    total, fsdp = 1, 1
    for dim, (size, name) in enumerate(zip(shape, logical_axes or (None,) * len(shape))):
        axes = rules.get(name) if name else None
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
    return _abstract_model(model_config, (lora.enabled, lora.rank, lora.alpha, lora.dropout, tuple(expand_targets(lora.targets))))


@functools.lru_cache(maxsize=8)
def _abstract_model(model_config, lora: tuple):
    from flax import nnx

    from stjax.lora import LoraParam, attach_adapters
    from stjax.models.transformer import CausalLM

    enabled, rank, alpha, dropout, targets = lora

    def build():
        model = CausalLM(model_config, rngs=nnx.Rngs(0))
        if enabled:
            attach_adapters(model, rank=rank, alpha=alpha, dropout=dropout, targets=targets)
        return model

    model = nnx.eval_shape(build)
    return nnx.split(model, LoraParam if enabled else nnx.Param, ...)


def _param_bytes(state, mesh, rules) -> tuple[float, int, dict, list[str]]:
    """(bytes per chip, parameter count, {layer: bytes per chip once gathered over fsdp}, errors)."""
    from flax import nnx

    per_chip, count, errors, per_layer = 0.0, 0, [], {}
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param):
            continue
        shape, itemsize = tuple(var.shape), var.dtype.itemsize
        n = math.prod(shape)
        shards, fsdp, error = _shards(shape, getattr(var, "logical_axes", None), mesh, rules)
        if error:
            errors.append(f"parameter {'.'.join(map(str, path))}: {error}")
        per_chip += n * itemsize / shards
        count += n
        if path[0] == "layers":  # gathered over fsdp for the layer's matmuls, still split over tensor
            rows = [path[1]] if isinstance(path[1], int) else range(shape[0])  # scanned layers: one row each
            for i in rows:
                per_layer[i] = per_layer.get(i, 0) + n * itemsize * fsdp / shards / len(rows)
    return per_chip, count, per_layer, errors


def rows_per_chip(config, mesh) -> float:
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
    adapters = len(expand_targets(config.lora.targets)) if config.lora.enabled else 0
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
    mesh, errors = resolve_mesh(config.mesh, topology.chips)
    notes: list[str] = []
    lora = config.lora
    _, trained, rest = abstract_model(model_config, lora)
    rules = mesh_rules(config.mesh)
    trained_bytes, n_trained, layers_trained, e1 = _param_bytes(trained, mesh, rules)
    rest_bytes, n_rest, layers_rest, e2 = _param_bytes(rest, mesh, rules)
    layer_gather = max((layers_trained.get(i, 0) + layers_rest.get(i, 0) for i in layers_rest | layers_trained),
                       default=0)
    errors += e1 + e2
    kind = config.loss.kind
    pact = kind in ("pact", "pact_bucket")
    needs_ref = kind != "sft"
    online = needs_ref and config.loss.ref == "online"
    K = safety_tokens or 50  # stjax safety-tokens' top_k default

    rows = rows_per_chip(config, mesh)
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
                   if is_matrix(path, v.shape) and path[0] != "embed_tokens")  # kernels, adapters
    if model_config.tie_word_embeddings:
        n_matmul += model_config.vocab_size * model_config.hidden_size
    packed_fill = None  # packing: tokens an example takes in a row, over the rows' fill
    cache_len = seq_len if seq_len is not None else float(config.data.max_len)  # the cache runs on unpacked rows
    if config.data.packing:
        packed_fill = (seq_len if seq_len is not None else config.data.max_len) / PACKED_FILL
        seq_len = float(config.data.max_len)
        seq_len_source = "max_len (data.packing: full rows)"
        notes.append(f"data.packing: batch_size rows of max_len a step; steps from the examples' estimated width "
                     f"at {PACKED_FILL:.0%} fill")
    elif seq_len is None:
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
        if packed_fill:  # rows of max_len hold examples of the mean width, PACKED_FILL full
            per_epoch = math.ceil(examples * packed_fill / (config.train.batch_size * config.data.max_len))
        steps = config.train.epochs * per_epoch
        if config.train.max_steps is not None:
            steps = min(steps, config.train.max_steps)
        if needs_ref and not online:
            cache_seconds = 2 * forward * examples * cache_len / (peak * mfu)
    return Estimate(topology, mesh, memory, n_trained + n_rest, n_trained, tokens_per_step, seq_len_source, steps,
                    examples, flops, mfu, step_seconds, cache_seconds, notes, errors)


def _flat_params(state):
    from flax import nnx

    return [(path, var) for path, var in nnx.to_flat_state(state) if isinstance(var, nnx.Param)]
