"""Step time, tokens/s and MFU of the train step on whatever device JAX sees (GPU, TPU, CPU).

Variants, each the trainer's program (`build_objective` + `build_program`, AdamW with
clipping, a 1-device mesh): SFT and PACT with the cached reference (`loss.ref: cached`) and
the online one (`online`), with LoRA (q/v, r 8: the default section) and with full
fine-tuning (`--full` adds the full variants; memory allowing). Models are random and shaped
like real checkpoints (`SHAPES`: SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B; `tiny` for a CPU
smoke run); batches are chat-like (`--response-frac` of each row's real tokens is the
response, 75-100% of a row is real).

Model FLOPs (what the step's math needs on the real tokens, padding excluded, counted from
the config, not from XLA):
- decoder matmuls: 2 N FLOPs per token forward (N = the decoder's weight count, attention
  and MLP, embeddings excluded); backward 2 N per token for the input gradients, plus 2 N for
  the weight gradients with full fine-tuning only (LoRA's adapters are negligible);
- attention scores and values: 4 x layers x heads x head_dim x S per token forward (S the
  row's mean real length, halved: causal), twice that backward;
- the vocabulary projection: 2 D V per loss token forward, 2 D V backward (input gradient),
  2 D V more with full fine-tuning (the output matrix's gradient);
- PACT online adds two reference forwards without backward (the full and the response-only
  sequence; the latter counted at its width).
MFU = model FLOPs / step time / the device's peak (`PEAK_TFLOPS`, dense bf16 per chip, or
`--peak-tflops`); on CPU there is no stated peak, so MFU is n/a unless given.

With `--torch` and torch installed, the same SFT and PACT steps written reference-style in
PyTorch (transformers LlamaForCausalLM, PEFT LoRA q/v, full [B, L, V] logits, each batch
padded to its longest row; PACT with a second frozen copy of the model run twice) are timed
on torch's device (CUDA when it sees one), interleaved with stjax's, and printed as ratios.

    python benchmarks/accelerator.py --shape smollm2-135m --batch 16 --length 256
    python benchmarks/accelerator.py --shape tiny --repeats 2                     # CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from _common import (Runner, bench_objective, build_model, cached_refs, chat_batch, compile_step, device_batch, fresh,
                     paired_ratio, step_runner, synthetic_safety_tokens, time_interleaved)
from stjax.models import ModelConfig

SHAPES = {  # Hub config.json fields of the checkpoints these stand in for
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=448, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}
PEAK_TFLOPS = {  # dense bf16 TFLOP/s per chip, from the vendors' data sheets
    "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def hf_dict(shape: str) -> dict:
    return {"model_type": "llama", "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
            **SHAPES[shape]}


def decoder_weights(hf: dict) -> int:
    """N: the decoder's matmul weights (attention and MLP of every layer)."""
    d, heads, kv, inter = hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"], hf["intermediate_size"]
    head_dim = d // heads
    attention = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o; k, v
    return hf["num_hidden_layers"] * (attention + 3 * d * inter)


def model_flops(hf: dict, *, rows: int, real_tokens: int, loss_tokens: int, full: bool,
                online_tokens: tuple[tuple[int, int], ...] = ()) -> float:
    """The step's model FLOPs (module docstring) over the real (unpadded) tokens: decoder
    and attention at every real token, the vocabulary projection at the loss tokens;
    online_tokens: (tokens, row width) of each extra reference forward."""
    n, d, v = decoder_weights(hf), hf["hidden_size"], hf["vocab_size"]
    layers, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    backward = 2.0 if full else 1.0  # x forward: input gradients, and weight gradients with full fine-tuning

    def forward(tokens: int, width: float) -> float:
        return 2 * n * tokens + 4 * layers * heads * (d // heads) * tokens * width / 2

    total = forward(real_tokens, real_tokens / rows) * (1 + backward) + 2 * d * v * loss_tokens * (1 + backward)
    return total + sum(forward(tokens, width) for tokens, width in online_tokens)


def device_peak(override: float | None) -> tuple[float | None, str]:
    kind = jax.devices()[0].device_kind
    if override:
        return override * 1e12, f"{kind}, peak {override:g} TFLOP/s (given)"
    for name, tflops in sorted(PEAK_TFLOPS.items(), key=lambda item: -len(item[0])):
        if name.lower() in kind.lower():
            return tflops * 1e12, f"{kind}, peak {tflops:g} TFLOP/s dense bf16"
    return None, f"{kind}, no stated peak (MFU n/a; give --peak-tflops)"


def torch_steps(hf: dict, host: dict, ids: np.ndarray, weights: np.ndarray, header_len: int, *, dtype: str):
    """Reference-style PyTorch SFT and PACT steps on the same batch: Runners, or {} without torch."""
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    config = LlamaConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    base = LlamaForCausalLM(config).to(device, torch_dtype)
    reference = LlamaForCausalLM(config).to(device, torch_dtype).eval()  # the reference release keeps a copy
    reference.load_state_dict(base.state_dict())
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    longest = int(host["attention_mask"].sum(axis=1).max())  # padded to the batch's longest row
    tensor = {k: torch.as_tensor(np.asarray(host[k])[:, :longest]).to(device)
              for k in ("inputs", "targets", "attention_mask", "loss_mask", "response_pos")}
    cols = torch.as_tensor(ids, device=device).long()
    w = torch.as_tensor(weights, device=device)
    mask = tensor["loss_mask"].float()
    first = torch.argmax((tensor["response_pos"] >= 0).int(), dim=1)
    shift = torch.clamp(first - header_len + 1, min=0)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step(pact: bool):
        logits = model(input_ids=tensor["inputs"].long(), attention_mask=tensor["attention_mask"].long()).logits.float()
        logp = torch.log_softmax(logits, -1).gather(-1, tensor["targets"].long()[..., None])[..., 0]
        loss = -(logp * mask).sum() / mask.sum()
        if pact:
            with torch.no_grad():
                full = reference(input_ids=tensor["inputs"].long(),
                                 attention_mask=tensor["attention_mask"].long()).logits[..., cols].float()
                rows = torch.arange(tensor["inputs"].shape[1], device=device)[None] + shift[:, None]
                post_in = torch.gather(tensor["inputs"], 1, rows.clamp(max=tensor["inputs"].shape[1] - 1)).long()
                post = reference(input_ids=post_in, attention_mask=tensor["attention_mask"].long()).logits[..., cols]
                q = torch.softmax((0.5 * full + 0.5 * post.float()) / 2.0, -1) * w
                q = q / q.sum(-1, keepdim=True)
            log_p = torch.log_softmax(logits[..., cols] / 2.0, -1)
            kl = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(-1) * 4.0
            loss = loss + (kl * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        return {"loss": float(loss.detach())}

    return {"torch sft (lora)": Runner(lambda: step(False)), "torch pact (lora)": Runner(lambda: step(True))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="smollm2-135m")
    parser.add_argument("--layers", type=int, help="override the shape's layer count (quicker runs)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--response-frac", type=float, default=0.2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on GPU/TPU, float32 on CPU")
    parser.add_argument("--full", action="store_true", help="also full fine-tuning (SFT and PACT cached)")
    parser.add_argument("--torch", action="store_true", help="also the reference-style PyTorch steps")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU where it is not known")
    parser.add_argument("--safety-tokens", type=int, default=50)
    parser.add_argument("--header-len", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan-layers", action="store_true", help="the layers stacked under lax.scan (model.scan_layers)")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    hf = hf_dict(args.shape) | ({"num_hidden_layers": args.layers} if args.layers else {})
    config = ModelConfig.from_hf_dict(hf, source=args.shape, param_dtype=dtype, compute_dtype=dtype,
                                      scan_layers=args.scan_layers)
    peak, device_text = device_peak(args.peak_tflops)
    print(f"jax {jax.__version__}, {device_text}; {args.shape} shape ({hf['num_hidden_layers']} layers"
          f"{', scanned' if args.scan_layers else ''}), {dtype}; "
          f"batch {args.batch} x {args.length}, response {args.response_frac:.0%} of each row")
    host = chat_batch(args.batch, args.length, config.vocab_size, response_frac=args.response_frac)
    batch = device_batch(host)
    real, loss_tokens = int(host["attention_mask"].sum()), int(host["loss_mask"].sum())
    post_width = min(args.length, host["loss_index"].shape[1] + args.header_len)

    def objective(kind, ref="cached"):
        return bench_objective(kind, config.vocab_size, ref=ref, safety_tokens=args.safety_tokens,
                               header_len=args.header_len)

    plans = [("sft", "cached", False), ("pact", "cached", False), ("pact", "online", False)]
    if args.full:
        plans += [("sft", "cached", True), ("pact", "cached", True)]
    runners, flops = {}, {}
    for full in sorted({p[2] for p in plans}):
        graphdef, params, rest = build_model(config, lora=not full)
        for kind, ref, f in [p for p in plans if p[2] == full]:
            name = f"{kind}{' ' + ref if kind == 'pact' else ''} ({'full' if full else 'lora'})"
            goal = objective(kind, ref)
            step_batch = batch
            if kind == "pact" and ref == "cached":
                step_batch = {**batch, **cached_refs(goal, graphdef, params, rest, batch)}
            step, state, frozen, seconds = compile_step(graphdef, fresh(params), rest, step_batch, goal, lora=not full,
                                                        ref=ref)
            print(f"compiled {name} in {seconds:.1f}s")
            runners[name] = step_runner(step, state, frozen, step_batch)
            online = ((real, real / args.batch), (loss_tokens + args.batch * args.header_len, post_width))
            flops[name] = model_flops(hf, rows=args.batch, real_tokens=real, loss_tokens=loss_tokens, full=full,
                                      online_tokens=online if ref == "online" else ())
    if args.torch:
        ids, weights = synthetic_safety_tokens(config.vocab_size, args.safety_tokens)
        runners.update(torch_steps(hf, host, ids, weights, args.header_len, dtype=dtype))
    time_interleaved(runners, warmup=args.warmup, repeats=args.repeats)

    base = runners["sft (lora)"]
    print(f"\n{args.repeats} interleaved rounds after {args.warmup} warm-up; step s: median; x sft: median of the "
          f"per-round ratio to sft (lora); tokens/s: real (unpadded) tokens")
    print(f"{'variant':<22}{'step s':>9}{'x sft':>7}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}")
    for name, run in runners.items():
        model = flops.get(name)
        achieved = f"{model / run.median / 1e12:>9.2f}" if model else f"{'n/a':>9}"
        mfu = f"{model / run.median / peak:>7.1%}" if model and peak else f"{'n/a':>7}"
        print(f"{name:<22}{run.median:>9.4f}{paired_ratio(run, base):>7.2f}{real / run.median:>11.0f}{achieved}{mfu}")
    for name in [n for n in runners if n.startswith("torch")]:
        ours = runners["sft (lora)" if "sft" in name else "pact online (lora)"]  # torch pact runs its reference online
        print(f"stjax / {name} step time: {paired_ratio(ours, runners[name]):.3f}")
    print(f"total script time: {time.perf_counter() - began:.1f}s")


if __name__ == "__main__":
    main()
