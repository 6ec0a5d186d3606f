"""Compiled memory and step time of the SFT train step at Llama-3's 128k vocabulary.

The model is a random Llama-architecture `init_model` (hidden 256, 2 layers by default) with
Llama-3's vocabulary of 128256 tokens, so the vocabulary projection dominates as it does in
real fine-tuning. The step is the trainer's (`make_train_step` + `jit_train_step`, AdamW with
clipping, 1-device mesh), on a chat-like batch of 8 x 512 whose last 20% of real tokens are the
response. Variants: LoRA on q/v (the trainer's default section) and full fine-tuning, each with
the library's chunked cross-entropy (`loss.chunk_tokens` tokens per vocabulary chunk) and,
for contrast, with a naive loss that takes log_softmax over the full [B, L, V] logits.

Memory is XLA's compiled buffer assignment (`jit(...).lower(...).compile().memory_analysis()`),
which needs compilation only, so it is taken at the full size. temp is the scratch the step
needs beyond its arguments and outputs; args are the state, frozen weights and batch; out
aliases the donated state. `temp/logits` divides temp by one float32 [B, L, V] logits tensor
(2.1 GB at 8 x 512 x 128256): the chunked step must stay below 1, a naive step needs several.
`temp/chunk` divides by one chunk's float32 logits [B, chunk_tokens / B, V]. The line "per
chunk" compiles the LoRA step again with half the chunk and reports how much temp one chunk
of logits costs (about 2 chunks: the recomputed logits and their gradient); the rest of the
chunked step's temp is the decoder's activations, which grow with layers and length, not with
the vocabulary. Figures come from the backend the script runs on (CPU by default); GPU/TPU
buffer assignment differs somewhat.

Step time runs a smaller batch (`--time-batch`, `--time-length`) since a full-size step takes
tens of seconds on a 2-core CPU: warm-up, then the median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from _common import (
    build_model, chat_batch, compile_step, device_batch, fresh, llama_config, memory, step_runner,
    time_interleaved,
)
from stjax.losses import chunk_length
from stjax.objective import Objective
from stjax.training.objectives import LossSection
from stjax.training.objectives import build_objective


def naive_sft_loss(outputs, batch, refs):
    """Cross-entropy through full [B, L, V] float32 logits (what chunking avoids)."""
    logits = jnp.einsum("bld,dv->blv", outputs.hidden, outputs.output_weights.astype(outputs.hidden.dtype),
                        preferred_element_type=jnp.float32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"]
    total = -(logp * mask).sum()
    return total, mask.sum(), {"ce": total}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama 3: 128256)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="rows of the compiled (memory) step")
    parser.add_argument("--length", type=int, default=512, help="sequence length of the compiled (memory) step")
    parser.add_argument("--chunk-tokens", type=int, default=LossSection.chunk_tokens,
                        help="loss.chunk_tokens: tokens per vocabulary chunk")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="params and compute")
    parser.add_argument("--time-batch", type=int, default=2, help="rows of the timed step")
    parser.add_argument("--time-length", type=int, default=512, help="sequence length of the timed step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--no-naive", action="store_true", help="skip the full-logits contrast")
    args = parser.parse_args(argv)

    t_script = time.perf_counter()
    config = llama_config(vocab=args.vocab, hidden=args.hidden, layers=args.layers, dtype=args.dtype)
    print(f"jax {jax.__version__} ({jax.default_backend()}); Llama-shaped model: vocab {config.vocab_size}, "
          f"hidden {config.hidden_size}, {config.num_layers} layers, {config.num_heads}/{config.num_kv_heads} heads, "
          f"{args.dtype}; loss.chunk_tokens {args.chunk_tokens}")

    def sft(chunk_tokens):
        return build_objective(LossSection(kind="sft", chunk_tokens=chunk_tokens))

    losses = {"chunked": sft(args.chunk_tokens)}
    if not args.no_naive:
        losses["naive"] = Objective(naive_sft_loss, None)
    models = {"lora": build_model(config, lora=True), "full": build_model(config, lora=False)}
    variants = [(model, loss) for loss in losses for model in models]

    def compiled(model, loss_fn, rows, length):
        """(compiled step, its initial state, frozen, batch, compile seconds)."""
        graphdef, params, rest = models[model]
        batch = device_batch(chat_batch(rows, length, config.vocab_size))
        step, state, frozen, seconds = compile_step(graphdef, fresh(params), rest, batch, loss_fn, lora=model == "lora")
        return step, state, frozen, batch, seconds

    B, L, V = args.batch, args.length, config.vocab_size
    logits_gb = B * L * V * 4 / 1e9

    def chunk_gb(chunk_tokens):
        return B * chunk_length(B, L, chunk_tokens) * V * 4 / 1e9

    mem = {}
    for model, loss in variants:
        step, _, _, _, seconds = compiled(model, losses[loss], B, L)
        mem[model, loss] = memory(step)
        print(f"compiled {model}/{loss} at {B}x{L} in {seconds:.1f}s")
    half = args.chunk_tokens // 2
    half_temp = memory(compiled("lora", sft(half), B, L)[0])["temp"]

    runners = {}
    for model, loss in variants:
        step, state, frozen, batch, _ = compiled(model, losses[loss], args.time_batch, args.time_length)
        runners[model, loss] = step_runner(step, state, frozen, batch)
    time_interleaved(runners, warmup=args.warmup, repeats=args.repeats)

    print()
    print(f"memory at batch {B} x length {L}: one float32 [B, L, V] logits tensor = {logits_gb:.2f} GB, "
          f"one loss chunk [B, {chunk_length(B, L, args.chunk_tokens)}, V] = {chunk_gb(args.chunk_tokens):.3f} GB")
    print(f"time at batch {args.time_batch} x length {args.time_length}: median of {args.repeats} "
          f"interleaved steps after {args.warmup} warm-up")
    print(f"{'variant':<16}{'temp GB':>9}{'args GB':>9}{'out GB':>8}{'temp/logits':>13}{'temp/chunk':>12}"
          f"{'step s':>9}{'tok/s':>9}{'loss':>9}")
    tokens = args.time_batch * args.time_length
    for key in variants:
        m, run = mem[key], runners[key]
        print(f"{'/'.join(key):<16}{m['temp']:>9.3f}{m['args']:>9.3f}{m['out']:>8.3f}{m['temp'] / logits_gb:>13.2f}"
              f"{m['temp'] / chunk_gb(args.chunk_tokens):>12.1f}{run.median:>9.3f}{tokens / run.median:>9.0f}"
              f"{float(run.result['loss']):>9.3f}")
    per_chunk = (mem["lora", "chunked"]["temp"] - half_temp) / (chunk_gb(args.chunk_tokens) - chunk_gb(half))
    rest_gb = mem["lora", "chunked"]["temp"] - per_chunk * chunk_gb(args.chunk_tokens)
    print(f"per chunk: lora/chunked temp is {half_temp:.3f} GB at chunk_tokens {half}, so each chunk of logits "
          f"costs {per_chunk:.1f} chunks of temp; the remaining {rest_gb:.3f} GB does not scale with the chunk")
    verdict = all(mem[m, "chunked"]["temp"] < logits_gb for m in models)
    print(f"chunked temp < one logits tensor ({logits_gb:.2f} GB): {'yes' if verdict else 'NO'}")
    print("raw step seconds: " + "; ".join(f"{'/'.join(k)} " + " ".join(f"{t:.3f}" for t in r.times)
                                           for k, r in runners.items()))
    print(f"total script time: {time.perf_counter() - t_script:.1f}s")


if __name__ == "__main__":
    main()
