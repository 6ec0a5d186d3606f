"""How much probability a model puts on the safety tokens at each early response position.

PACT constrains exactly this quantity during fine-tuning, so its curve over the first
response positions of harmful prompts shows directly whether fine-tuning eroded the
refusal onset (an aligned model concentrates mass on "I", "cannot", "sorry" early on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stjax.evaluation.token_mass import response_token_mass
from stjax.generation import chat_prompt_ids, default_stop_ids, generate
from stjax.models.transformer import CausalLM


def safety_mass_by_position(
    model: CausalLM,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str] | None,
    safety_ids: Sequence[int],
    positions: int = 32,
    *,
    system_prompt: str | None = None,
    batch_size: int = 8,
    vocab_chunk: int = 8192,
    mesh=None,
) -> np.ndarray:
    """[N, positions] probability mass on `safety_ids` at each response position.

    The responses are teacher-forced: the given ones, or (None) the model's own greedy
    continuations of `positions` tokens. NaN marks positions past a response's end.
    """
    prompt_ids = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}], system_prompt) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if responses is None:
        response_ids = []
        for start in range(0, len(prompt_ids), batch_size):
            response_ids += generate(model, prompt_ids[start:start + batch_size], max_new_tokens=positions,
                                     stop_ids=default_stop_ids(tokenizer), pad_id=pad_id, mesh=mesh).tokens
    else:
        if len(responses) != len(prompts):
            raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts")
        response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    return response_token_mass(model, prompt_ids, response_ids, safety_ids, positions=positions,
                               batch_size=batch_size, pad_id=pad_id, vocab_chunk=vocab_chunk)


def mass_curve(mass: np.ndarray) -> dict:
    """Per position: the mean over the responses that reach it, and how many do."""
    count = np.sum(~np.isnan(mass), axis=0)
    total = np.nansum(mass, axis=0)
    mean = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
    return {"mean": [None if np.isnan(m) else float(m) for m in mean], "count": count.astype(int).tolist()}
