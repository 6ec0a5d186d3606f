"""`loss.kind` -> the objective the train step differentiates: the loss section of the
training config and the factories of the objectives that are not PACT's.

sft: plain cross-entropy on assistant tokens. kl: CE + lambda * KL(p_ref || p_theta) over
the full vocabulary. constrained_sft: Qi et al. (2025)'s token-wise constrained objective.
pact and pact_bucket: `stjax.pact.objective`. `build_objective` is the one place a config
section turns into factory arguments (see `stjax.objective` for what an objective is).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import jax
import jax.numpy as jnp

from stjax.configlib import ConfigKeyError
from stjax.losses import full_vocab_kl
from stjax.objective import (Objective, Reference, batch_cross_entropy, reference_hidden, ce_plus, gather_positions,
                             loss_target_logprobs, masked_sum, scatter_positions)
from stjax.pact import objective as pact_objectives
from stjax.pact.loss import GateSettings


LossKind = Literal["sft", "pact", "kl", "constrained_sft", "pact_bucket"]
LOSS_KINDS = typing.get_args(LossKind)


@dataclasses.dataclass
class LossSection:
    """`kind` picks the objective; the other keys parametrize the ones that use them."""

    kind: LossKind = "sft"
    chunk_tokens: int = 512  # tokens per chunk of the vocabulary projection
    lam: float = 1.0  # weight of the KL term (PACT's lambda; kl baseline too)
    ref: Literal["online", "cached"] = "cached"  # reference logits: in the step, or precomputed once
    # PACT
    safety_tokens: str | None = None  # output directory of stjax safety-tokens
    temperature: float = 2.0
    gate: GateSettings = dataclasses.field(default_factory=GateSettings)  # loss.gate.top_p, ... (pact.loss)
    # where PACT's KL applies (pact only; the defaults are the reference's): the first N response
    # positions only (null: all), and whether at the last one, whose target ends the turn
    kl_first_positions: int | None = None
    kl_at_end: bool = True
    # constrained_sft (Qi et al. 2025): beta_1, beta_2..beta_{early_until}, then beta_late
    beta_first: float = 0.5
    beta_early: float = 2.0
    beta_late: float = 0.1
    early_until: int = 5


def sft(*, chunk_tokens: int = 512) -> Objective:
    """Cross-entropy on the assistant tokens."""

    def loss(outputs, batch, refs):
        total, count = batch_cross_entropy(outputs, batch, chunk_tokens)
        return total, count, {"ce": total}

    return Objective(loss, None)


def kl_baseline(*, lam: float = 1.0, chunk_tokens: int = 512) -> Objective:
    """CE + lam * KL(p_ref || p_theta) over the full vocabulary at assistant positions (online
    reference only: its refs are vocabulary-wide per token)."""

    def reference_fn(reference: Reference, batch):
        return {"ref_hidden": reference_hidden(reference, batch),
                "ref_vocab": reference.output_weights(None)}

    def loss(outputs, batch, refs):
        kl = scatter_positions(full_vocab_kl(gather_positions(refs["ref_hidden"], batch), refs["ref_vocab"],
                                             gather_positions(outputs.hidden, batch), outputs.output_weights,
                                             chunk_tokens=chunk_tokens), batch)
        return ce_plus(outputs, batch, kl, lam=lam, chunk_tokens=chunk_tokens)

    return Objective(loss, reference_fn, cacheable=False)


def constrained_sft(*, beta_first: float = 0.5, beta_early: float = 2.0, beta_late: float = 0.1,
                    early_until: int = 5, chunk_tokens: int = 512) -> Objective:
    """Qi et al. (2025): -(2/beta_t) log sigmoid(beta_t (log p(y_t) - log p_ref(y_t))) per token,
    beta_1 = beta_first, beta_2..beta_{early_until} = beta_early, beta_late after."""

    def reference_fn(reference: Reference, batch):
        hidden = reference_hidden(reference, batch)
        return {"ref_logprobs": loss_target_logprobs(hidden, reference.output_weights(None), batch,
                                                     chunk_tokens=chunk_tokens)}

    def loss(outputs, batch, refs):
        logp = loss_target_logprobs(outputs.hidden, outputs.output_weights, batch, chunk_tokens=chunk_tokens)
        t = batch["response_pos"] + 1
        # t counts the final response's tokens; earlier assistant turns (t = 0) take beta_late
        beta = jnp.where(t == 1, beta_first, jnp.where((t > 1) & (t <= early_until), beta_early, beta_late))
        per_token = -(2.0 / beta) * jax.nn.log_sigmoid(beta * (logp - refs["ref_logprobs"]))
        return masked_sum(per_token, batch), batch["loss_mask"].sum(), {"ce": masked_sum(-logp, batch)}

    return Objective(loss, reference_fn)


def build_objective(cfg: LossSection, *, safety_ids=None, safety_weights=None, header_len: int = 0) -> Objective:
    """The objective of a loss section (PACT's needs the safety tokens and the header length)."""
    chunk = cfg.chunk_tokens
    builders = {
        "sft": lambda: sft(chunk_tokens=chunk),
        "pact": lambda: pact_objectives.pact(safety_ids, safety_weights, header_len, lam=cfg.lam,
                                             temperature=cfg.temperature, gate=cfg.gate, chunk_tokens=chunk,
                                             first_positions=cfg.kl_first_positions, at_end=cfg.kl_at_end),
        "pact_bucket": lambda: pact_objectives.pact_bucket(safety_ids, safety_weights, header_len, lam=cfg.lam,
                                                           temperature=cfg.temperature, gate=cfg.gate,
                                                           chunk_tokens=chunk),
        "kl": lambda: kl_baseline(lam=cfg.lam, chunk_tokens=chunk),
        "constrained_sft": lambda: constrained_sft(beta_first=cfg.beta_first, beta_early=cfg.beta_early,
                                                   beta_late=cfg.beta_late, early_until=cfg.early_until,
                                                   chunk_tokens=chunk),
    }
    objective = builders[cfg.kind]()
    if cfg.ref == "cached" and objective.needs_reference and not objective.cacheable:
        raise ConfigKeyError(f"'loss.ref': 'cached' is not available for loss.kind {cfg.kind} (its reference is "
                             "vocabulary-wide per token); use loss.ref=online")
    return objective
