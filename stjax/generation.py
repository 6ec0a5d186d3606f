"""Batched generation with a KV cache: one prefill, then a `lax.while_loop` of decode steps.

Prompts of different lengths are left-padded into a shape bucket (batch and prompt
length rounded up), so a stream of requests compiles a handful of programs, not one per
prompt. The loop stops early once every row hit a stop id.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stjax.data.batching import bucket
from stjax.data.template import render_ids
from stjax.models.transformer import CausalLM, KVCache


@dataclasses.dataclass(frozen=True)
class Reply:
    """A decoded chat reply; `ended`: a stop id ended it (False: cut off at max_new_tokens)."""

    text: str
    ended: bool


@dataclasses.dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per prompt, stop id excluded
    finished: list[bool]  # True where a stop id ended the row (False: hit max_new_tokens)


def sample_next(logits: jax.Array, rng: jax.Array, temperature: float, top_p: float, greedy: bool) -> jax.Array:
    """Next token ids [B] from float32 logits [B, V]."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # keep a token while the mass before it is below top_p (the most likely is always kept)
    kept = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    keep = logits >= cutoff
    return jax.random.categorical(rng, jnp.where(keep, logits, -jnp.inf), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "stop_ids", "greedy"))
def _generate_ids(graphdef, state, tokens, mask, rng, temperature, top_p, *,
                  max_new_tokens: int, stop_ids: tuple[int, ...], greedy: bool):
    model: CausalLM = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    cache = KVCache.empty(model.config, batch, prompt_len + max_new_tokens)
    hidden, cache = model.hidden_states(tokens, attention_mask=mask, cache=cache)
    next_pos = mask.sum(axis=1).astype(jnp.int32)  # position of the first generated token
    stops = jnp.asarray(stop_ids or (-1,), jnp.int32)

    rng, key = jax.random.split(rng)
    first = sample_next(model.project(hidden[:, -1]), key, temperature, top_p, greedy)
    out = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, stops)

    def cond(carry):
        step, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, out, done, rng = carry
        last = out[:, step - 1][:, None]
        hidden, cache = model.hidden_states(
            last, attention_mask=jnp.ones_like(last, bool), positions=(next_pos + step - 1)[:, None], cache=cache)
        rng, key = jax.random.split(rng)
        token = sample_next(model.project(hidden[:, -1]), key, temperature, top_p, greedy)
        token = jnp.where(done, 0, token)
        out = out.at[:, step].set(token)
        return step + 1, cache, out, done | jnp.isin(token, stops), rng

    steps, _, out, done, _ = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), cache, out, done, rng))
    return out, steps


def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
    pad_id: int = 0,
    mesh: Mesh | None = None,
) -> Generation:
    """Generates continuations of token-id prompts (greedy when temperature == 0).

    With a mesh, the batch is split over its (data, fsdp) axes and the model's own
    parameter shardings are used as they are.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    rows = len(prompts)
    multiple = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    batch = -(-bucket(rows, 1) // multiple) * multiple
    width = bucket(max(len(p) for p in prompts))
    tokens = np.full((batch, width), pad_id, np.int32)
    mask = np.zeros((batch, width), bool)
    for i, prompt in enumerate(prompts):
        tokens[i, width - len(prompt):] = prompt
        mask[i, width - len(prompt):] = True
    mask[rows:, -1] = True  # filler rows: one real token so their attention is well defined

    graphdef, state = nnx.split(model)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    if mesh is not None:
        rows_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
        tokens, mask = jax.device_put(tokens, rows_sharding), jax.device_put(mask, rows_sharding)
    stop_ids = tuple(int(s) for s in stop_ids)
    out, steps = _generate_ids(
        graphdef, state, tokens, mask, jax.random.key(seed),
        jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
        max_new_tokens=max_new_tokens, stop_ids=stop_ids, greedy=temperature == 0,
    )
    out = np.asarray(jax.device_get(out))[:rows, : int(steps)]
    tokens_out, finished = [], []
    for row in out:
        hit = np.flatnonzero(np.isin(row, stop_ids)) if stop_ids else np.array([], int)
        tokens_out.append(row[: hit[0]].tolist() if hit.size else row.tolist())
        finished.append(bool(hit.size))
    return Generation(tokens_out, finished)


def chat_prompt_ids(tokenizer, messages: Sequence[dict], system_prompt: str | None = None) -> list[int]:
    """A conversation through the chat template, ending in the assistant's generation prompt."""
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return render_ids(tokenizer, messages, add_generation_prompt=True)


def generate_chat(
    model: CausalLM,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    *,
    system_prompt: str | None = None,
    **kwargs,
) -> list[Reply]:
    """Generates replies to chat conversations through the tokenizer's chat template.

    Each reply says whether it ended its turn: a judge of refusals needs to tell a
    finished answer from one that ran on until max_new_tokens."""
    prompts = [chat_prompt_ids(tokenizer, messages, system_prompt) for messages in conversations]
    stop_ids = kwargs.pop("stop_ids", None) or default_stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = generate(model, prompts, stop_ids=stop_ids, pad_id=pad_id, **kwargs)
    return [Reply(tokenizer.decode(ids, skip_special_tokens=True), ended)
            for ids, ended in zip(result.tokens, result.finished)]


def default_stop_ids(tokenizer) -> tuple[int, ...]:
    """EOS plus the end-of-turn tokens chat templates use (<|eot_id|>, <|im_end|>, ...)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    for marker in ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<end_of_turn>", "</s>"):
        if marker in vocab:
            ids.add(vocab[marker])
    return tuple(sorted(ids))
