"""`loss.kind` -> the loss the train step differentiates, and the reference it needs.

An objective is two pure functions: `reference_fn(reference, batch) -> refs` computes
what it needs from the frozen reference model (safety-token logits, target log-probs),
and `loss(outputs, batch, refs)` returns sums over assistant tokens plus the token
count, so gradient accumulation and logging weigh tokens equally. With `ref: online`
the step calls reference_fn every step; with `ref: cached` it is run once over the
training set before training (`stjax.training.reference_cache`) and refs arrive with the
batch, so the step runs no reference forward at all.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from stjax.configlib import ConfigKeyError
from stjax.losses import (
    cross_entropy, full_vocab_kl, logsumexp_chunked, pact_bucket_kl_per_position, pact_kl_per_position,
    target_logprobs,
)
from stjax.pact.reference import reference_safety_logits, response_start_shift, shift_rows, unshift_rows
from stjax.training.config import LossSection
from stjax.training.step import LossFn, ModelOutputs, Reference, ReferenceFn


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: LossFn
    reference_fn: ReferenceFn | None  # None: the objective needs no reference
    cacheable: bool = True  # refs are small enough to precompute per example

    @property
    def needs_reference(self) -> bool:
        return self.reference_fn is not None


def _masked(x, batch):
    return (x * batch["loss_mask"]).sum()


def _gate_kwargs(cfg: LossSection) -> dict:
    return dict(gate_top_p=cfg.gate_top_p, gate_alpha=cfg.gate_alpha, gate_bias=cfg.gate_bias,
                gate_temperature=cfg.gate_temperature, gate_prefix_n=cfg.gate_prefix_n,
                gate_decay_tau=cfg.gate_decay_tau, gate_prefix_boost=cfg.gate_prefix_boost)


def _ce(outputs: ModelOutputs, batch: dict, cfg: LossSection):
    return cross_entropy(outputs.hidden, outputs.output_weights, batch["targets"], batch["loss_mask"],
                         chunk_tokens=cfg.chunk_tokens)


def _columns(outputs: ModelOutputs, ids: jax.Array) -> jax.Array:
    """Trained-model logits [B, L, K] of the safety tokens only (no vocabulary-wide logits)."""
    w = jnp.take(outputs.output_weights, ids, axis=1).astype(outputs.hidden.dtype)
    return jnp.einsum("bld,dk->blk", outputs.hidden, w, preferred_element_type=jnp.float32)


def sft(cfg: LossSection) -> Objective:
    def loss(outputs, batch, refs):
        total, count = _ce(outputs, batch, cfg)
        return total, count, {"ce": total}

    return Objective(loss, None)


def pact(cfg: LossSection, ids: np.ndarray, weights: np.ndarray, header_len: int) -> Objective:
    """CE + lambda * the gated safety-token KL at every assistant position."""
    ids, weights = jnp.asarray(ids), jnp.asarray(weights)

    def reference_fn(reference: Reference, batch):
        r_full, r_post = reference_safety_logits(reference.hidden, reference.output_weights(ids), batch, header_len)
        return {"ref_full": r_full, "ref_post": r_post}

    def loss(outputs, batch, refs):
        ce, count = _ce(outputs, batch, cfg)
        kl, gate = pact_kl_per_position(_columns(outputs, ids), refs["ref_full"], refs["ref_post"], weights,
                                        batch["response_pos"], temperature=cfg.temperature, **_gate_kwargs(cfg))
        kl_sum = _masked(kl, batch)
        return ce + cfg.lam * kl_sum, count, {"ce": ce, "kl": kl_sum, "gate": _masked(gate, batch)}

    return Objective(loss, reference_fn)


def pact_bucket(cfg: LossSection, ids: np.ndarray, weights: np.ndarray, header_len: int) -> Objective:
    """Experimental: PACT's KL over K + 1 buckets (safety tokens + the rest of the vocabulary),
    which holds the trained model to the reference's absolute confidence in the safety tokens."""
    ids, weights = jnp.asarray(ids), jnp.asarray(weights)
    T = cfg.temperature

    def reference_fn(reference: Reference, batch):
        refs = pact(cfg, ids, weights, header_len).reference_fn(reference, batch)
        vocab = reference.output_weights(None)
        refs["ref_full_lse"] = logsumexp_chunked(reference.hidden(batch["inputs"], batch["attention_mask"]), vocab,
                                                 temperature=T, chunk_tokens=cfg.chunk_tokens)
        shift = response_start_shift(batch["loss_mask"], header_len)
        post_inputs, inside = shift_rows(batch["inputs"], shift)
        post_attention, _ = shift_rows(batch["attention_mask"], shift, fill=False)
        post_lse = logsumexp_chunked(reference.hidden(post_inputs, post_attention & inside), vocab,
                                     temperature=T, chunk_tokens=cfg.chunk_tokens)
        refs["ref_post_lse"] = unshift_rows(post_lse, shift)
        return refs

    def loss(outputs, batch, refs):
        ce, count = _ce(outputs, batch, cfg)
        z_lse = logsumexp_chunked(outputs.hidden, outputs.output_weights, temperature=T,
                                  chunk_tokens=cfg.chunk_tokens)
        kl, gate = pact_bucket_kl_per_position(
            _columns(outputs, ids), z_lse, refs["ref_full"], refs["ref_full_lse"], refs["ref_post"],
            refs["ref_post_lse"], weights, batch["response_pos"], temperature=T, **_gate_kwargs(cfg))
        kl_sum = _masked(kl, batch)
        return ce + cfg.lam * kl_sum, count, {"ce": ce, "kl": kl_sum, "gate": _masked(gate, batch)}

    return Objective(loss, reference_fn)


def kl_baseline(cfg: LossSection) -> Objective:
    """CE + lambda * KL(p_ref || p_theta) over the full vocabulary at assistant positions."""

    def reference_fn(reference: Reference, batch):
        return {"ref_hidden": reference.hidden(batch["inputs"], batch["attention_mask"]),
                "ref_vocab": reference.output_weights(None)}

    def loss(outputs, batch, refs):
        ce, count = _ce(outputs, batch, cfg)
        kl = full_vocab_kl(refs["ref_hidden"], refs["ref_vocab"], outputs.hidden, outputs.output_weights,
                           chunk_tokens=cfg.chunk_tokens)
        kl_sum = _masked(kl, batch)
        return ce + cfg.lam * kl_sum, count, {"ce": ce, "kl": kl_sum}

    return Objective(loss, reference_fn, cacheable=False)


def constrained_sft(cfg: LossSection) -> Objective:
    """Qi et al. (2025): -(2/beta_t) log sigmoid(beta_t (log p(y_t) - log p_ref(y_t))) per token,
    beta_1 = beta_first, beta_2..beta_{early_until} = beta_early, beta_late after."""

    def reference_fn(reference: Reference, batch):
        hidden = reference.hidden(batch["inputs"], batch["attention_mask"])
        return {"ref_logprobs": target_logprobs(hidden, reference.output_weights(None), batch["targets"],
                                                chunk_tokens=cfg.chunk_tokens)}

    def loss(outputs, batch, refs):
        logp = target_logprobs(outputs.hidden, outputs.output_weights, batch["targets"],
                               chunk_tokens=cfg.chunk_tokens)
        t = batch["response_pos"] + 1
        beta = jnp.where(t == 1, cfg.beta_first, jnp.where(t <= cfg.early_until, cfg.beta_early, cfg.beta_late))
        per_token = -(2.0 / beta) * jax.nn.log_sigmoid(beta * (logp - refs["ref_logprobs"]))
        return _masked(per_token, batch), batch["loss_mask"].sum(), {"ce": _masked(-logp, batch)}

    return Objective(loss, reference_fn)


def build_objective(cfg: LossSection, *, safety_ids=None, safety_weights=None, header_len: int = 0) -> Objective:
    builders = {
        "sft": lambda: sft(cfg),
        "pact": lambda: pact(cfg, safety_ids, safety_weights, header_len),
        "pact_bucket": lambda: pact_bucket(cfg, safety_ids, safety_weights, header_len),
        "kl": lambda: kl_baseline(cfg),
        "constrained_sft": lambda: constrained_sft(cfg),
    }
    objective = builders[cfg.kind]()
    if cfg.ref == "cached" and objective.needs_reference and not objective.cacheable:
        raise ConfigKeyError(f"'loss.ref': 'cached' is not available for loss.kind {cfg.kind} (its reference is "
                             "vocabulary-wide per token); use loss.ref=online")
    return objective
