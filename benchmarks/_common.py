"""Shared pieces of the train-step benchmarks: a random Llama-shaped model, a chat-like
batch, the trainer's own train program (`stjax.training.program`), and timing helpers."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stjax.data.batching import loss_index
from stjax.lora import LoraParam, apply_lora
from stjax.models import ModelConfig, init_model, make_mesh
from stjax.lora import LoraSection
from stjax.objective import Objective
from stjax.training.objectives import LossSection, build_objective
from stjax.training.optimizer import OptimizerSection, make_optimizer, make_schedule
from stjax.training.program import build_program, compiled_step
from stjax.training.step import Frozen, make_reference, split_model

GB = 1e9


def llama_config(*, vocab: int, hidden: int, layers: int, dtype: str = "float32") -> ModelConfig:
    """Llama 3's proportions at a small width: head_dim 64, one kv head per 4 query heads,
    SwiGLU width 3.5x hidden."""
    heads = max(hidden // 64, 1)
    hf = {
        "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": hidden * 7 // 2,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": max(heads // 4, 1),
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
    }
    return ModelConfig.from_hf_dict(hf, source="benchmark", param_dtype=dtype, compute_dtype=dtype)


def chat_batch(rows: int, length: int, vocab: int, *, response_frac: float = 0.2, seed: int = 0) -> dict:
    """A padded batch as `stjax.data.batching` collates it: rows of 75-100% of `length` real
    tokens, the last `response_frac` of each row's tokens being the assistant response
    (loss_mask), response_pos counting its positions from 0."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (rows, length + 1)).astype(np.int32)
    real = rng.integers(int(0.75 * length), length + 1, rows)
    start = real - np.maximum((response_frac * real).astype(int), 1)
    pos = np.arange(length)[None]
    attention = pos < real[:, None]
    loss_mask = attention & (pos >= start[:, None])
    most = int(loss_mask.sum(axis=1).max())
    return {
        "inputs": tokens[:, :-1] * attention, "targets": tokens[:, 1:] * attention,
        "attention_mask": attention, "loss_mask": loss_mask.astype(np.float32),
        "response_pos": np.where(loss_mask, pos - start[:, None], -1).astype(np.int32),
        "loss_index": loss_index(loss_mask, min(length, -(-most // 8) * 8)),
    }


def synthetic_safety_tokens(vocab: int, count: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` random vocabulary ids and weights in [0.1, 1), standing in for stage 1's."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(vocab, count, replace=False).astype(np.int32)
    return ids, rng.uniform(0.1, 1.0, count).astype(np.float32)


def bench_objective(kind: str, vocab: int, *, ref: str = "cached", safety_tokens: int = 50, header_len: int = 4,
                    seed: int = 0) -> Objective:
    """The trainer's objective of `kind`; PACT's on `synthetic_safety_tokens`."""
    if kind == "sft":
        return build_objective(LossSection(kind="sft"))
    ids, weights = synthetic_safety_tokens(vocab, safety_tokens, seed)
    return build_objective(LossSection(kind=kind, ref=ref), safety_ids=ids, safety_weights=weights,
                           header_len=header_len)


def build_model(config: ModelConfig, *, lora: bool, seed: int = 0):
    """(graphdef, trainable params, frozen rest) with the trainer's default LoRA section."""
    model = init_model(config, seed=seed)
    if lora:
        section = LoraSection()
        apply_lora(model, rank=section.rank, alpha=section.alpha, dropout=section.dropout,
                   targets=section.targets, seed=seed)
    return split_model(model, LoraParam if lora else nnx.Param)


def compile_step(graphdef, params, rest, batch: dict, objective: Objective, *, lora: bool, ref: str = "cached"):
    """The trainer's program (AdamW + clipping at the default config, 1-device mesh), its step
    compiled for these shapes; returns (compiled step, initial state, frozen, compile s).
    `params` is donated by the state's initialization, so pass a fresh copy per variant."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    section = OptimizerSection()
    tx = make_optimizer(section, make_schedule(section, 100, 100))
    program = build_program(graphdef, params, rest, objective, tx, mesh, lora=lora, ref=ref)
    state = program.init_state(params)
    start = time.perf_counter()
    compiled = compiled_step(program, batch)
    return compiled, state, program.frozen, time.perf_counter() - start


def memory(compiled) -> dict[str, float]:
    """Compiled memory figures in GB (XLA's buffer assignment for this backend)."""
    m = compiled.memory_analysis()
    return {"temp": m.temp_size_in_bytes / GB, "args": m.argument_size_in_bytes / GB,
            "out": m.output_size_in_bytes / GB, "alias": m.alias_size_in_bytes / GB}


def device_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


class Runner:
    """Times synchronized calls of fn(), keeping the last result."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.times: list[float] = []
        self.result = None

    def __call__(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.result = jax.block_until_ready(self.fn())
        if record:
            self.times.append(time.perf_counter() - start)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def step_runner(compiled, state, frozen, batch) -> Runner:
    """A Runner of one compiled train step, threading its donated state; result = metrics."""

    def call():
        nonlocal state
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(state)
        return metrics

    return Runner(call)


def paired_ratio(run: Runner, base: Runner) -> float:
    """Median over rounds of run's time / base's time in the same round: steadier than a
    ratio of medians when other processes load the machine for a few rounds."""
    return statistics.median(t / b for t, b in zip(run.times, base.times))


def time_interleaved(runners: dict[str, Runner], *, warmup: int, repeats: int) -> None:
    """Warm-up calls, then `repeats` rounds calling every runner once per round, so machine
    load drifts hit all variants alike (see `paired_ratio`)."""
    for _ in range(warmup):
        for run in runners.values():
            run(record=False)
    for _ in range(repeats):
        for run in runners.values():
            run()


def fresh(tree):
    """A device copy (the step donates its state, so each variant needs its own params)."""
    return jax.tree.map(jnp.copy, tree)


def reference_program(graphdef, fn):
    """jit of fn(reference, batch) on the starting weights, as `precompute_reference` runs it."""

    @jax.jit
    def run(params, rest, batch):
        return fn(make_reference(graphdef, params, Frozen(rest, params)), batch)

    return run


def cached_refs(objective, graphdef, params, rest, batch) -> dict:
    """The reference arrays `ref: cached` feeds: the objective's reference_fn on the starting
    weights, kept at response positions only (as `CachedBatches` scatters them)."""
    refs = reference_program(graphdef, objective.reference_fn)(params, rest, batch)
    mask = batch["loss_mask"][..., None] > 0
    return {k: jnp.where(mask, v, 0.0) for k, v in refs.items()}
