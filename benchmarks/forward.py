"""CPU throughput of stjax vs transformers (PyTorch) on the same SmolLM2-135M-shaped weights.

A random SmolLM2-135M-shaped LlamaForCausalLM (30 layers, hidden 576, 9/3 heads, tied
embeddings, vocab 49152) is built with transformers, saved to a temp dir and loaded into
stjax with `from_pretrained` (float32), so both frameworks run identical weights; the max
abs logit difference is printed once as a sanity check.

Measured, in one process, with the two frameworks' repeats interleaved (so load from other
processes hits both alike) and medians reported:

- forward (prefill): tokens/s of one full forward pass over a [batch, seq] block, full-vocab
  logits included. stjax: a `jax.jit`-ed pure function of (nnx.split state, tokens), timed
  with `block_until_ready` after a compile/warm-up call. torch: `model(ids)` under
  `torch.no_grad()`, default thread count.
- decode: new tokens/s of greedy generation (batch * new_tokens / wall time of the whole
  generate call, so the short prompt prefill is included for both). stjax: `stjax.generation
  .generate` (no stop ids, so all steps run), warmed up once with the same shapes so compile
  time is excluded (and reported separately). transformers: `model.generate(do_sample=False,
  max_new_tokens=N, min_new_tokens=N)` with its default dynamic KV cache.

Ratios are stjax / torch measured in this run: > 1 means stjax is faster. Absolute tok/s
depend on the machine and its load; compare ratios across runs, not raw numbers.

Defaults (batch 4 x 256 forward, batch 4 x prompt 32 + 64 new tokens, 5 repeats) finish in a
few minutes on 2 CPU cores; `--layers 2` gives a quick smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def build_hf_model(layers: int, seed: int):
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # default init leaves norms at exactly 1: make them non-trivial
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="forward batch size")
    parser.add_argument("--seq", type=int, default=256, help="forward sequence length")
    parser.add_argument("--gen-batch", type=int, default=4, help="decode batch size")
    parser.add_argument("--prompt", type=int, default=32, help="decode prompt length")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy new tokens per row")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per framework")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (30 = SmolLM2-135M)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from stjax.generation import generate
    from stjax.models.checkpoint_io import from_pretrained

    t_script = time.perf_counter()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}), layers {args.layers}")

    hf = build_hf_model(args.layers, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = from_pretrained(tmp, dtype=jnp.float32)
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"parameters: {n_params / 1e6:.1f}M")

    # ------------------------------------------------------------------ forward (prefill)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens):
        return nnx.merge(graphdef, state)(tokens)

    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(1, 49152, (args.batch, args.seq)).astype(np.int32)
    tokens_jax = jnp.asarray(tokens)
    tokens_pt = torch.tensor(tokens, dtype=torch.long)

    def run_jax():
        return forward(state, tokens_jax).block_until_ready()

    def run_torch():
        with torch.no_grad():
            return hf(tokens_pt).logits

    compile_fwd, logits_jax = timed(run_jax)  # trace + compile + first run
    _, logits_pt = timed(run_torch)
    diff = float(np.max(np.abs(np.asarray(logits_jax) - logits_pt.numpy())))
    scale = float(np.max(np.abs(logits_pt.numpy())))
    print(f"logits max abs diff stjax vs torch: {diff:.3e} (max |logit| {scale:.2f})")
    del logits_jax, logits_pt

    fwd = {"stjax": [], "torch": []}
    for _ in range(args.repeats):
        fwd["stjax"].append(timed(run_jax)[0])
        fwd["torch"].append(timed(run_torch)[0])

    # ------------------------------------------------------------------ decode
    prompts = rng.integers(1, 49152, (args.gen_batch, args.prompt)).astype(np.int32)
    prompts_list = prompts.tolist()
    prompts_pt = torch.tensor(prompts, dtype=torch.long)
    N = args.new_tokens

    def gen_jax():
        return generate(model, prompts_list, max_new_tokens=N).tokens

    def gen_torch():
        with torch.no_grad():
            out = hf.generate(prompts_pt, attention_mask=torch.ones_like(prompts_pt), do_sample=False,
                              max_new_tokens=N, min_new_tokens=N, pad_token_id=0)
        return out[:, args.prompt:].tolist()

    compile_gen, ids_jax = timed(gen_jax)
    _, ids_pt = timed(gen_torch)
    same = sum(a == b for ra, rb in zip(ids_jax, ids_pt) for a, b in zip(ra, rb))
    prefix = [next((i for i, (a, b) in enumerate(zip(ra, rb)) if a != b), len(ra))
              for ra, rb in zip(ids_jax, ids_pt)]
    print(f"greedy tokens identical: {same}/{args.gen_batch * N} (agreeing prefix per row: {prefix})")

    dec = {"stjax": [], "torch": []}
    for _ in range(args.repeats):
        dec["stjax"].append(timed(gen_jax)[0])
        dec["torch"].append(timed(gen_torch)[0])

    # ------------------------------------------------------------------ report
    fwd_tokens, dec_tokens = args.batch * args.seq, args.gen_batch * N
    fwd_rate = {k: fwd_tokens / statistics.median(v) for k, v in fwd.items()}
    dec_rate = {k: dec_tokens / statistics.median(v) for k, v in dec.items()}
    print()
    print(f"forward: batch {args.batch} x {args.seq} tokens; decode: batch {args.gen_batch}, prompt {args.prompt}, "
          f"{N} new tokens; median of {args.repeats} interleaved repeats")
    print(f"{'framework':<12}{'forward tok/s':>15}{'decode tok/s':>15}")
    for k in ("stjax", "torch"):
        print(f"{k:<12}{fwd_rate[k]:>15.1f}{dec_rate[k]:>15.1f}")
    print(f"{'stjax/torch':<12}{fwd_rate['stjax'] / fwd_rate['torch']:>15.2f}{dec_rate['stjax'] / dec_rate['torch']:>15.2f}")
    print()
    print(f"stjax compile (+ first run): forward {compile_fwd:.1f}s, generate {compile_gen:.1f}s")
    print("raw seconds  forward stjax " + " ".join(f"{t:.3f}" for t in fwd["stjax"])
          + " | torch " + " ".join(f"{t:.3f}" for t in fwd["torch"]))
    print("             decode  stjax " + " ".join(f"{t:.3f}" for t in dec["stjax"])
          + " | torch " + " ".join(f"{t:.3f}" for t in dec["torch"]))
    print(f"total script time: {time.perf_counter() - t_script:.1f}s")


if __name__ == "__main__":
    main()
