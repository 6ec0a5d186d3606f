"""The optax chain: global-norm clipping, then AdamW on a learning-rate schedule."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import optax
from flax import nnx

from stjax.models.layer_stack import is_matrix


@dataclasses.dataclass
class OptimizerSection:
    lr: float = 3e-5
    schedule: Literal["constant", "warmup_cosine", "step_decay"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    decay_gamma: float = 0.85  # step_decay: lr *= gamma after every epoch
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0


def make_schedule(cfg: OptimizerSection, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """constant | warmup_cosine | step_decay (lr * gamma^epoch, as the PACT reference trains)."""
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else None
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.min_lr_ratio)
    if cfg.schedule == "step_decay":
        per_epoch = max(steps_per_epoch, 1)

        def main(step):
            return cfg.lr * cfg.decay_gamma ** jnp.floor((step + cfg.warmup_steps) / per_epoch)
    else:
        def main(step):
            return jnp.asarray(cfg.lr, jnp.float32)
    if warmup is None:
        return main
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def decay_mask(params: nnx.State) -> nnx.State:
    """Weight decay on matrices only: never on norm scales or biases (however the layers are
    laid out: a scanned layer's norm scale is [layers, hidden] and still no matrix)."""
    return nnx.map_state(lambda path, var: is_matrix(path, var.shape), params)


def make_optimizer(cfg: OptimizerSection, schedule: optax.Schedule) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
