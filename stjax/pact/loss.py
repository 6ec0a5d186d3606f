"""PACT's loss term as pure functions: the gate, the gated safety-token KL, and the
experimental K + 1 bucket variant.

All take the K safety-token columns of the logits ([B, L, K]) of the trained model (full
context), the frozen reference (full context) and the reference on the response-only
sequence, the safety tokens' positive weights [K], and response_pos [B, L] (assistant
positions counted from 0). The gate's hyperparameters are one frozen `GateSettings`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """How much of the response-only reference to mix in at each assistant position.

    top_p / temperature: the nucleus that counts how spread a distribution is; alpha, bias:
    the sigmoid of the spread difference; prefix_n, decay_tau: full weight on the first
    prefix_n response positions, then exp(-(t - prefix_n) / decay_tau) (a hard cut when
    decay_tau is 0); prefix_boost scales the whole gate.
    """

    top_p: float = 0.9
    alpha: float = 2.0
    bias: float = 0.0
    temperature: float = 1.0
    prefix_n: int = 8
    decay_tau: float = 8.0
    prefix_boost: float = 1.0


def top_p_count(logits: jax.Array, top_p: float, temperature: float = 1.0) -> jax.Array:
    """Smallest number of entries whose softmax(logits / temperature) mass reaches top_p."""
    probs = jnp.sort(jax.nn.softmax(logits / temperature, axis=-1), axis=-1)[..., ::-1]
    count = (jnp.cumsum(probs, axis=-1) < top_p).sum(axis=-1) + 1
    return jnp.minimum(count, logits.shape[-1])


def pact_gate(train_logits, ref_post_logits, response_pos, gate: GateSettings = GateSettings()) -> jax.Array:
    """Per-position weight [B, L] of the response-only reference (no gradient through it).

    It grows when the trained model spreads its safety-token mass over more tokens than the
    response-only reference does, and decays after the first gate.prefix_n response positions.
    """
    k = train_logits.shape[-1]
    n_train = top_p_count(train_logits, gate.top_p, gate.temperature) / k
    n_post = top_p_count(ref_post_logits, gate.top_p, gate.temperature) / k
    weight = jax.nn.sigmoid(gate.alpha * (n_train - n_post - gate.bias))
    t = response_pos.astype(jnp.float32)
    if gate.decay_tau > 0:
        decay = jnp.exp(-jnp.maximum(t - gate.prefix_n, 0.0) / gate.decay_tau)
    else:
        decay = (t < gate.prefix_n).astype(jnp.float32)
    return jax.lax.stop_gradient(weight * decay * gate.prefix_boost)


def pact_kl_per_position(train_logits, ref_full_logits, ref_post_logits, weights, response_pos, *,
                         temperature: float = 2.0, gate: GateSettings = GateSettings()):
    """(KL_t [B, L], gate [B, L]) of the weighted safety-token target q against the trained
    model: KL(q || softmax(z / T)) * T^2, q = softmax(mixed reference / T) * weights, renormalized."""
    z = train_logits.astype(jnp.float32)
    c = pact_gate(z, ref_post_logits.astype(jnp.float32), response_pos, gate)
    ref = (1.0 - c[..., None]) * ref_full_logits + c[..., None] * ref_post_logits
    q = jax.nn.softmax(ref.astype(jnp.float32) / temperature, axis=-1) * weights
    q = q / jnp.maximum(q.sum(axis=-1, keepdims=True), 1e-12)
    q = jax.lax.stop_gradient(q)
    log_p = jax.nn.log_softmax(z / temperature, axis=-1)
    kl = (q * (jnp.log(jnp.maximum(q, 1e-12)) - log_p)).sum(axis=-1) * temperature**2
    return kl, c


def pact_kl(train_logits, ref_full_logits, ref_post_logits, weights, mask, response_pos, *,
            temperature: float = 2.0, gate: GateSettings = GateSettings()) -> tuple[jax.Array, dict]:
    """PACT's KL term as the paper states it: the mean over masked positions [B, L] of
    pact_kl_per_position. Returns (scalar, {"gate_mean": ...})."""
    kl, c = pact_kl_per_position(train_logits, ref_full_logits, ref_post_logits, weights, response_pos,
                                 temperature=temperature, gate=gate)
    mask = mask.astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    return (kl * mask).sum() / count, {"gate_mean": (c * mask).sum() / count}


def pact_bucket_kl_per_position(train_logits, train_lse, ref_full_logits, ref_full_lse, ref_post_logits,
                                ref_post_lse, weights, response_pos, *, temperature: float = 2.0,
                                gate: GateSettings = GateSettings()):
    """Experimental K + 1 bucket PACT: (KL_t [B, L], gate [B, L]).

    Buckets are the K safety tokens and "the rest of the vocabulary", with full-vocabulary
    probabilities at temperature T (the *_lse arguments are logsumexp(logits / T) over the
    whole vocabulary). The target keeps the reference's mass on each safety token scaled by
    weight / max(weight); the remainder goes to the rest bucket.
    """
    T = temperature
    z = train_logits.astype(jnp.float32)
    c = pact_gate(z, ref_post_logits.astype(jnp.float32), response_pos, gate)[..., None]
    log_ref = (1.0 - c) * (ref_full_logits / T - ref_full_lse[..., None]) + c * (
        ref_post_logits / T - ref_post_lse[..., None])
    q_tokens = jnp.exp(log_ref) * (weights / jnp.maximum(weights.max(), 1e-12))
    q_tokens = jax.lax.stop_gradient(jnp.minimum(q_tokens, 1.0))
    q_rest = jnp.maximum(1.0 - q_tokens.sum(axis=-1), 0.0)
    log_p_tokens = z / T - train_lse[..., None]
    p_rest = jnp.maximum(1.0 - jnp.exp(log_p_tokens).sum(axis=-1), 1e-12)
    kl = (q_tokens * (jnp.log(jnp.maximum(q_tokens, 1e-12)) - log_p_tokens)).sum(axis=-1)
    kl += q_rest * (jnp.log(jnp.maximum(q_rest, 1e-12)) - jnp.log(p_rest))
    return kl * T**2, c[..., 0]
