"""PACT stage 1: find the safety tokens, where the aligned model differs from its base.

Refusal responses are teacher-forced through the aligned model (after its chat-template
prompt) and the base model (after a plain `User: ...\\n\\nAssistant: ` prompt). Per
sample, the next-token distributions over the response positions are averaged; then over
samples. The top-k tokens by mean aligned probability are kept, their difference scores
standardized and L2-normalized: a sparse vocabulary-sized vector whose support is the
safety-token set and whose positive part gives per-token weights.

All samples of a batch and all positions run in one jitted forward per model (the
reference implementation loops over samples and positions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from stjax.errors import UserError
from stjax.fileio import atomic_directory, read_json_object
from stjax.data.batching import bucket, pack_teacher_forced
from stjax.data.template import render_ids
from stjax.models.transformer import CausalLM

BASE_PROMPT = "User: {prompt}\n\nAssistant: "
TENSORS_FILE = "safety_tokens.safetensors"
METADATA_FILE = "safety_tokens.json"
TABLE_FILE = "safety_tokens.tsv"


class SafetyTokenError(UserError):
    """Mismatched models/tokenizers or a safety-token file that does not fit the model."""


@dataclasses.dataclass
class TeacherForcedPair:
    aligned_prompt: list[int]
    base_prompt: list[int]
    response: list[int]


@dataclasses.dataclass
class SafetyTokens:
    vector: np.ndarray  # [V] float32, zero outside the support
    ids: np.ndarray  # [K] int32, sorted
    weights: np.ndarray  # [K] float32, max(v, 0) at ids
    mean_p_aligned: np.ndarray  # [V]
    mean_p_base: np.ndarray  # [V]
    metadata: dict


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary and special tokens: two tokenizers that split text alike agree."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:16]


def teacher_forced_pairs(tokenizer, rows: Sequence[dict], max_resp_len: int) -> list[TeacherForcedPair]:
    """rows of {input, output} -> prompts for both models and the truncated response ids."""
    pairs = []
    for row in rows:
        aligned = render_ids(tokenizer, [{"role": "user", "content": row["input"]}], add_generation_prompt=True)
        base = tokenizer(BASE_PROMPT.format(prompt=row["input"]), add_special_tokens=True)["input_ids"]
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"][:max_resp_len]
        if response:
            pairs.append(TeacherForcedPair(list(aligned), list(base), list(response)))
    return pairs


def _response_distributions(model: CausalLM, tokens, mask, gather, temperature) -> jax.Array:
    """softmax(logits / T) [B, R, V] at the positions that predict the response tokens."""
    hidden, _ = model.hidden_states(tokens, attention_mask=mask)
    picked = jnp.take_along_axis(hidden, gather[..., None], axis=1)
    return jax.nn.softmax(model.project(picked) / temperature, axis=-1)


@jax.jit
def _batch_sums(aligned_state, base_state, graphdefs, batch_a, batch_b, resp_mask, temperature, log_ratio):
    """Sums over samples of the per-sample position means: (diff [V], p_aligned [V], p_base [V])."""
    aligned = nnx.merge(graphdefs[0], aligned_state)
    base = nnx.merge(graphdefs[1], base_state)
    p_a = _response_distributions(aligned, *batch_a, temperature)
    p_b = _response_distributions(base, *batch_b, temperature)
    diff = jnp.where(log_ratio, p_a * (jnp.log(jnp.maximum(p_b, 1e-30)) - jnp.log(jnp.maximum(p_a, 1e-30))),
                     p_a - p_b)
    weights = resp_mask / jnp.maximum(resp_mask.sum(axis=1, keepdims=True), 1)  # per-sample mean over positions
    return tuple(jnp.einsum("br,brv->v", weights, x) for x in (diff, p_a, p_b))


def compute_safety_tokens(
    aligned: CausalLM,
    base: CausalLM,
    pairs: Sequence[TeacherForcedPair],
    *,
    temperature: float = 1.0,
    diff_mode: Literal["p_diff", "pref_logratio"] = "p_diff",
    top_k: int = 50,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
) -> SafetyTokens:
    if aligned.config.vocab_size != base.config.vocab_size:
        raise SafetyTokenError(f"vocabularies differ: aligned model has {aligned.config.vocab_size} tokens, "
                               f"base model {base.config.vocab_size}")
    if not pairs:
        raise SafetyTokenError("no samples with a non-empty response")
    from tqdm.auto import tqdm

    graphdefs = (nnx.graphdef(aligned), nnx.graphdef(base))
    aligned_state, base_state = nnx.state(aligned), nnx.state(base)
    resp_len = bucket(max(len(p.response) for p in pairs), 8)
    vocab = aligned.config.vocab_size
    sums = [np.zeros(vocab, np.float64) for _ in range(3)]
    for start in tqdm(range(0, len(pairs), batch_size), desc="safety tokens", unit="batch", disable=not progress):
        chunk = list(pairs[start:start + batch_size])
        responses = [p.response for p in chunk]
        batch_a = pack_teacher_forced([p.aligned_prompt for p in chunk], responses, batch_size, resp_len, pad_id)
        batch_b = pack_teacher_forced([p.base_prompt for p in chunk], responses, batch_size, resp_len, pad_id)
        out = _batch_sums(aligned_state, base_state, graphdefs, batch_a[:3], batch_b[:3], batch_a[3],
                          jnp.float32(temperature), diff_mode == "pref_logratio")
        for total, part in zip(sums, out):
            total += np.asarray(part, np.float64)
    mean_diff, mean_pa, mean_pb = (s / len(pairs) for s in sums)
    vector = sparse_direction(mean_diff, mean_pa, top_k)
    ids = np.flatnonzero(vector).astype(np.int32)
    return SafetyTokens(vector.astype(np.float32), ids, np.maximum(vector[ids], 0).astype(np.float32),
                        mean_pa.astype(np.float32), mean_pb.astype(np.float32),
                        {"num_samples": len(pairs), "temperature": temperature, "diff_mode": diff_mode,
                         "top_k": top_k, "vocab_size": vocab})


def sparse_direction(mean_diff: np.ndarray, mean_p_aligned: np.ndarray, top_k: int) -> np.ndarray:
    """Top-k by mean aligned probability; standardize the kept scores; L2-normalize."""
    keep = np.argsort(-mean_p_aligned, kind="stable")[:top_k]
    values = mean_diff[keep]
    values = (values - values.mean()) / (values.std() + 1e-6)
    values = values / (np.linalg.norm(values) + 1e-6)
    vector = np.zeros_like(mean_diff)
    vector[keep] = values
    return vector


# ------------------------------------------------------------------------------ files
def save_safety_tokens(result: SafetyTokens, out_dir: str | Path, tokenizer, extra_metadata: dict) -> Path:
    rows = token_table(result, tokenizer)
    with atomic_directory(out_dir) as staging:
        save_file({"v": result.vector, "ids": result.ids, "weights": result.weights}, str(staging / TENSORS_FILE))
        metadata = {**result.metadata, **extra_metadata, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                    "num_safety_tokens": int(result.ids.size)}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        lines = ["token_id\ttoken\tweight\tv\tmean_p_aligned\tmean_p_base"]
        lines += [f"{r['id']}\t{json.dumps(r['token'])}\t{r['weight']:.6f}\t{r['v']:.6f}\t{r['p_aligned']:.6g}\t"
                  f"{r['p_base']:.6g}" for r in rows]
        (staging / TABLE_FILE).write_text("\n".join(lines) + "\n")
    return Path(out_dir)


def token_table(result: SafetyTokens, tokenizer) -> list[dict]:
    """One row per safety token, most heavily weighted first."""
    rows = [{"id": int(i), "token": tokenizer.decode([int(i)]), "weight": float(max(result.vector[i], 0)),
             "v": float(result.vector[i]), "p_aligned": float(result.mean_p_aligned[i]),
             "p_base": float(result.mean_p_base[i])} for i in result.ids]
    return sorted(rows, key=lambda r: -r["v"])


def read_token_table(path: str | Path) -> list[dict]:
    """The rows `save_safety_tokens` wrote to safety_tokens.tsv, as `token_table` returns them."""
    lines = (Path(path) / TABLE_FILE).read_text(encoding="utf-8").splitlines()[1:]
    rows = []
    for line in lines:
        token_id, token, weight, v, p_aligned, p_base = line.split("\t")
        rows.append({"id": int(token_id), "token": json.loads(token), "weight": float(weight), "v": float(v),
                     "p_aligned": float(p_aligned), "p_base": float(p_base)})
    return rows


def token_statistics(rows: Sequence[dict], stop_ids: Sequence[int] = (), *, floor: float = 0.01) -> dict:
    """How much the set is made of tokens the aligned model really uses in refusals.

    `floor`: a token counts as carrying real aligned probability when its mean aligned
    probability is at least floor x the largest in the set. In a real model (SmolLM2) all
    50 do; a set padded with tokens that are merely "least improbable" (the old toy world:
    half of them, `<|im_end|>` among them) does not."""
    p = np.array([r["p_aligned"] for r in rows], np.float64)
    weights = np.array([r["weight"] for r in rows], np.float64)
    stops = [{"id": r["id"], "token": r["token"], "weight": r["weight"], "p_aligned": r["p_aligned"]}
             for r in rows if r["id"] in set(int(i) for i in stop_ids)]
    top = max(p.max(), 1e-30) if p.size else 1e-30
    return {"num_tokens": int(p.size), "p_aligned_max": float(p.max()) if p.size else 0.0,
            "p_aligned_median": float(np.median(p)) if p.size else 0.0,
            "p_aligned_min": float(p.min()) if p.size else 0.0,
            "min_over_max": float(p.min() / top) if p.size else 0.0,
            "above_floor": int((p >= floor * top).sum()), "floor": floor,
            "aligned_mass": float(p.sum()), "positive_weight": int((weights > 0).sum()),
            "stop_tokens_in_set": stops}


def drop_tokens(result: SafetyTokens, tokenizer, tokens: Sequence[str], *, positive_only: bool = False) -> SafetyTokens:
    """The set without the given tokens (matched as decoded, surrounding spaces ignored) and,
    with positive_only, without its zero-weight tokens; the remaining scores are unchanged.

    Dropping `<|im_end|>` when it has weight 0 stops the KL from suppressing end-of-turn
    (docs/toy_world.md); positive_only makes the KL's support the weighted tokens alone.
    """
    wanted = {t.strip() for t in tokens}
    drop = [int(i) for i in result.ids
            if tokenizer.decode([int(i)]).strip() in wanted or (positive_only and result.vector[i] <= 0)]
    vector = result.vector.copy()
    vector[drop] = 0.0
    ids = np.flatnonzero(vector).astype(np.int32)
    return dataclasses.replace(result, vector=vector, ids=ids, weights=np.maximum(vector[ids], 0),
                               metadata={**result.metadata, "dropped_tokens": sorted(wanted),
                                         "positive_only": positive_only})


def suppressed_stop_tokens(result: SafetyTokens, tokenizer) -> list[str]:
    """Warnings for end-of-turn / EOS tokens in the support with weight 0.

    q gives a zero-weight safety token zero mass, so PACT's KL lowers its probability
    (relative to the other safety tokens) at every assistant position, the answer's last
    one included: the fine-tuned model then struggles to end its turn (docs/toy_world.md).
    """
    from stjax.generation import default_stop_ids

    weights = dict(zip(result.ids.tolist(), result.weights.tolist()))
    warnings = []
    for i in sorted(default_stop_ids(tokenizer)):
        if weights.get(i, 1.0) > 0:  # not a safety token, or one the KL lifts
            continue
        token = tokenizer.decode([i])
        warnings.append(f"{token!r} (id {i}, an end-of-turn token) is a safety token with weight 0 "
                        f"(v = {result.vector[i]:.3f}): PACT's KL will push it down at every assistant position, "
                        f"which can keep the fine-tuned model from ending its answers; drop it from the set "
                        f"(drop_tokens: ['{token}']) or watch the task accuracy")
    return warnings


def load_safety_tokens(path: str | Path, *, vocab_size: int, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """(ids [K], weights [K]) from a safety-token directory, refusing a mismatched model."""
    path = Path(path)
    meta_file, tensor_file = path / METADATA_FILE, path / TENSORS_FILE
    for file in (meta_file, tensor_file):
        if not file.is_file():
            raise SafetyTokenError(f"{file}: not found (expected the output of stjax safety-tokens)")
    metadata = read_json_object(meta_file, SafetyTokenError, "; recompute it with stjax safety-tokens")
    if metadata.get("vocab_size") != vocab_size:
        raise SafetyTokenError(f"{path}: computed for a vocabulary of {metadata.get('vocab_size')} tokens, "
                               f"but the model has {vocab_size}")
    if tokenizer is not None and metadata.get("tokenizer_fingerprint") != tokenizer_fingerprint(tokenizer):
        raise SafetyTokenError(f"{path}: tokenizer fingerprint {metadata.get('tokenizer_fingerprint')} does not "
                               f"match the training tokenizer's {tokenizer_fingerprint(tokenizer)}")
    try:
        tensors = load_file(str(tensor_file))
    except Exception as e:  # safetensors raises its own errors on a truncated or foreign file
        raise SafetyTokenError(f"{tensor_file}: not a readable safetensors file ({str(e).splitlines()[0][:120]}); "
                               "recompute it with stjax safety-tokens") from None
    missing = [k for k in ("ids", "weights") if k not in tensors]
    if missing:
        raise SafetyTokenError(f"{tensor_file}: no tensor '{missing[0]}' (has {sorted(tensors)})")
    ids, weights = tensors["ids"], tensors["weights"]
    if ids.ndim != 1 or weights.shape != ids.shape:
        raise SafetyTokenError(f"{tensor_file}: expected 'ids' [K] and 'weights' [K], got {list(ids.shape)} and "
                               f"{list(weights.shape)}")
    if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab_size:
        raise SafetyTokenError(f"{tensor_file}: tensor 'ids' must hold token ids in 0..{vocab_size - 1}, got "
                               f"{'none' if ids.size == 0 else f'{ids.min()}..{ids.max()}'}")
    if not np.all(np.isfinite(weights)):
        raise SafetyTokenError(f"{tensor_file}: tensor 'weights' holds non-finite values")
    return ids.astype(np.int32), weights.astype(np.float32)
