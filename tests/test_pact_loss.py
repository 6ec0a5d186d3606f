"""pact_kl against an independent float64 NumPy statement of the published formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stjax.pact.loss import GateSettings, pact_gate, pact_kl, top_p_count


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_count(x, top_p, temp):
    """Loop form: add tokens from the most likely down until their mass reaches top_p."""
    probs = sorted(np_softmax(x / temp), reverse=True)
    total, n = 0.0, 0
    for p in probs:
        n += 1
        total += p
        if total >= top_p:
            break
    return n


def np_pact(z, rf, rp, w, mask, t, *, T=2.0, top_p=0.9, alpha=2.0, bias=0.0, gtemp=1.0, prefix=8, tau=8.0,
            boost=1.0):
    """Returns (loss, d loss / d z) computed position by position in float64."""
    B, L, K = z.shape
    loss, grad = 0.0, np.zeros_like(z)
    count = max(mask.sum(), 1.0)
    for b in range(B):
        for i in range(L):
            if not mask[b, i]:
                continue
            c = 1 / (1 + np.exp(-alpha * (np_count(z[b, i], top_p, gtemp) / K - np_count(rp[b, i], top_p, gtemp) / K - bias)))
            c *= np.exp(-max(t[b, i] - prefix, 0) / tau) if tau > 0 else float(t[b, i] < prefix)
            c *= boost
            r = (1 - c) * rf[b, i] + c * rp[b, i]
            q = np_softmax(r / T) * w
            q = q / max(q.sum(), 1e-12)
            p = np_softmax(z[b, i] / T)
            loss += (q * (np.log(np.maximum(q, 1e-12)) - np.log(p))).sum() * T**2
            grad[b, i] = T * (p * q.sum() - q)
    return loss / count, grad / count


@pytest.mark.parametrize("case", [
    dict(),
    dict(T=1.0, alpha=5.0, bias=0.1, prefix=3, tau=2.0),
    dict(tau=0.0, prefix=4, boost=1.5, top_p=0.5, gtemp=0.7),
])
def test_pact_kl_matches_float64_numpy(case):
    rng = np.random.default_rng(len(case))
    B, L, K = 3, 14, 9
    z, rf, rp = (rng.normal(0, 2, (B, L, K)) for _ in range(3))
    w = np.maximum(rng.normal(size=K), 0)
    w[0] = 0.7  # at least one positive weight
    mask = (rng.random((B, L)) > 0.3).astype(np.float64)
    t = np.maximum(np.cumsum(mask, 1) - 1, 0) + rng.integers(0, 3, (B, 1))  # several start offsets
    want, want_grad = np_pact(z, rf, rp, w, mask, t, **case)
    gate = GateSettings(top_p=case.get("top_p", 0.9), alpha=case.get("alpha", 2.0), bias=case.get("bias", 0.0),
                        temperature=case.get("gtemp", 1.0), prefix_n=case.get("prefix", 8),
                        decay_tau=case.get("tau", 8.0), prefix_boost=case.get("boost", 1.0))
    kwargs = dict(temperature=case.get("T", 2.0), gate=gate)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

    def loss(z_):
        return pact_kl(z_, f32(rf), f32(rp), f32(w), f32(mask), jnp.asarray(t), **kwargs)[0]

    got, got_grad = jax.value_and_grad(loss)(f32(z))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-6)


def test_gate_decays_after_the_prefix():
    K = 5
    z = jnp.zeros((1, 20, K)).at[..., 0].set(0.0)  # uniform: n = 5
    peaked = jnp.zeros((1, 20, K)).at[..., 0].set(20.0)  # n = 1
    t = jnp.arange(20)[None]
    gate = pact_gate(z, peaked, t)
    base = 1 / (1 + np.exp(-2.0 * (5 / K - 1 / K)))
    np.testing.assert_allclose(gate[0, :9], base, rtol=1e-6)  # t <= 8: no decay
    np.testing.assert_allclose(gate[0, 16], base * np.exp(-8 / 8.0), rtol=1e-6)
    hard = pact_gate(z, peaked, t, GateSettings(decay_tau=0.0, prefix_n=8))
    assert np.all(np.asarray(hard[0, :8]) > 0) and np.all(np.asarray(hard[0, 8:]) == 0)


def test_top_p_count():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    assert top_p_count(logits, 0.9).tolist() == [3]
    assert top_p_count(logits, 0.6).tolist() == [2]
    assert top_p_count(logits, 0.45).tolist() == [1]
    assert top_p_count(logits, 0.999).tolist() == [4]


# ------------------------------------------------------------------ where the KL applies
def _objective_case(seed=0, B=3, L=10, D=8, V=40, K=6):
    rng = np.random.default_rng(seed)
    from stjax.objective import ModelOutputs

    outputs = ModelOutputs(jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32),
                           jnp.asarray(rng.normal(size=(D, V)), jnp.float32))
    starts, ends = np.array([2, 4, 1]), np.array([7, 10, 5])  # response positions [start, end) per row
    pos = np.arange(L)[None]
    loss_mask = ((pos >= starts[:, None]) & (pos < ends[:, None])).astype(np.float32)
    batch = {"targets": jnp.asarray(rng.integers(0, V, (B, L))), "loss_mask": jnp.asarray(loss_mask),
             "response_pos": jnp.asarray(np.where(loss_mask > 0, pos - starts[:, None], -1))}
    refs = {"ref_full": jnp.asarray(rng.normal(size=(B, L, K)), jnp.float32),
            "ref_post": jnp.asarray(rng.normal(size=(B, L, K)), jnp.float32)}
    ids = rng.choice(V, K, replace=False).astype(np.int32)
    weights = np.maximum(rng.normal(size=K), 0).astype(np.float32) + 0.1
    return outputs, batch, refs, ids, weights, starts, ends


@pytest.mark.parametrize("first,at_end", [(None, True), (None, False), (3, True), (2, False)])
def test_pact_kl_positions_switches(first, at_end):
    """loss.kl_first_positions / loss.kl_at_end: the KL summed over exactly the chosen positions
    (by hand: response index < first, and not the row's last response position)."""
    from stjax.losses import cross_entropy
    from stjax.pact.loss import pact_kl_per_position
    from stjax.pact.objective import kl_positions_mask, pact

    outputs, batch, refs, ids, weights, starts, ends = _objective_case()
    lam = 0.7
    loss, count, metrics = pact(ids, weights, 4, lam=lam, first_positions=first, at_end=at_end).loss(
        outputs, batch, refs)
    columns = jnp.einsum("bld,dk->blk", outputs.hidden, outputs.output_weights[:, ids])
    kl, _ = pact_kl_per_position(columns, refs["ref_full"], refs["ref_post"], jnp.asarray(weights),
                                 batch["response_pos"])
    chosen = np.zeros(kl.shape, bool)
    for row, (s, e) in enumerate(zip(starts, ends)):
        last = e - 1 if at_end else e - 2
        stop = last if first is None else min(last, s + first - 1)
        chosen[row, s:stop + 1] = True
    np.testing.assert_array_equal(np.asarray(kl_positions_mask(batch, first_positions=first, at_end=at_end)) > 0,
                                  chosen)
    ce, n = cross_entropy(outputs.hidden, outputs.output_weights, batch["targets"], batch["loss_mask"])
    want_kl = float((np.asarray(kl) * chosen).sum())
    np.testing.assert_allclose(float(metrics["kl"]), want_kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(ce) + lam * want_kl, rtol=1e-5)
    assert float(count) == float(n) == batch["loss_mask"].sum()  # CE still over every assistant token


@pytest.mark.parametrize("loss,message", [
    ({"kind": "sft", "kl_at_end": False}, "apply to loss.kind pact, not sft"),
    ({"kind": "pact", "safety_tokens": "x", "kl_first_positions": 0}, "expected a positive number of positions"),
])
def test_kl_position_switches_are_validated(tmp_path, loss, message):
    from trainer_fixtures import make_config

    from stjax.configlib import ConfigKeyError

    with pytest.raises(ConfigKeyError, match=message):
        make_config(tmp_path, loss=loss)


def test_pact_kl_acts_on_the_final_response_only_in_multi_turn_batches():
    """Earlier assistant turns (train_on: all) add their CE to the loss; PACT's KL and gate
    stay those of the final response."""
    from stjax.losses import cross_entropy
    from stjax.pact.objective import pact

    outputs, batch, refs, ids, weights, starts, ends = _objective_case()
    earlier = np.zeros(batch["loss_mask"].shape, np.float32)
    earlier[0, 0:2] = earlier[2, 0] = 1.0  # earlier-turn targets before rows 0 and 2's final responses
    multi = {**batch, "loss_mask": batch["loss_mask"] + jnp.asarray(earlier)}
    lam = 0.7
    single_loss, single_count, single_metrics = pact(ids, weights, 4, lam=lam).loss(outputs, batch, refs)
    multi_loss, multi_count, multi_metrics = pact(ids, weights, 4, lam=lam).loss(outputs, multi, refs)
    extra_ce, extra_n = cross_entropy(outputs.hidden, outputs.output_weights, batch["targets"], jnp.asarray(earlier))
    assert int(multi_count) == int(single_count) + 3 == int(single_count) + int(extra_n)
    np.testing.assert_allclose(float(multi_metrics["kl"]), float(single_metrics["kl"]), rtol=1e-6)
    np.testing.assert_allclose(float(multi_metrics["gate"]), float(single_metrics["gate"]), rtol=1e-6)
    np.testing.assert_allclose(float(multi_loss), float(single_loss) + float(extra_ce), rtol=1e-5)
    assert float(extra_ce) > 0
