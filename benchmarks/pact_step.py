"""Cost of PACT's safety-token KL over plain SFT: step time and compiled temp memory.

One run, one model and batch, three train steps built as the trainer builds them
(`build_objective` + `make_train_step` + `jit_train_step`, AdamW with clipping, 1-device
mesh, LoRA on q/v with the trainer's default section unless `--full`):

- sft: chunked cross-entropy only.
- pact cached (`loss.ref: cached`): CE + the gated KL on K safety-token logits; the
  reference's [B, L, K] logits (full context and response only) arrive with the batch, as
  `CachedBatches` delivers them (computed here once with the objective's reference_fn, zero
  outside the response). The step's extra work is one [B, L, D] x [D, K] projection, the
  gate's two top-p sorts over K and the KL, all tiny next to the [D, V] projection of CE.
- pact online (`loss.ref: online`): the step also runs the reference (LoRA: the same
  weights with adapters off; `--full`: a frozen copy of the initial weights) twice, on the
  full sequence and on the response-only sequence, without gradient.
- sft / pact cached, "all pos": the same steps on a batch without `loss_index`, so the
  vocabulary projection runs at every position (prompt and padding included) as it did
  before losses gathered their positions; the line "vocabulary projections at the R loss
  positions" gives gathered / all-positions step time (`--response-frac 0.08` is the SST-2 mix).

The model is a random Llama-shaped `init_model` (hidden 256, 4 layers, vocab 32000 by
default) on a chat-like batch of 8 x 256 whose last 20% of real tokens are the response.
Memory is XLA's compiled buffer assignment (`memory_analysis().temp_size_in_bytes`, the
scratch beyond arguments and outputs). Time: warm-up, then rounds that run every variant
once, each call synchronized with block_until_ready; `step s` is the median, `time x` the
median over rounds of variant / sft within the round (robust to load from other processes).
The row "1 ref forward" times one reference forward of the decoder stack alone (no gradient,
no vocabulary projection): the unit of online's extra work.

Targets: cached <= 1.10x sft in time and temp memory. Online adds two reference forwards
without backward, so its time x should be about 1 + 2 x (the "1 ref forward" ratio); the last
line reports how many forwards online - cached measures. Were a step only the decoder
(forward + backward ~ 3 forwards) that would be (3 + 2) / 3 ~ 1.7x; it is much less here
because CE's vocabulary projection ([D, V], run forward, recomputed and differentiated per
chunk) makes an SFT step several forwards' worth, while the reference projects onto the K
safety-token columns only. Online's temp memory barely grows: the reference keeps no
activations for a backward pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from _common import (
    Runner, bench_objective, build_model, cached_refs, chat_batch, compile_step, device_batch, fresh, llama_config,
    memory, paired_ratio, reference_program, step_runner, time_interleaved,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--safety-tokens", type=int, default=50, help="K, the number of safety tokens")
    parser.add_argument("--header-len", type=int, default=4, help="assistant header tokens (Llama 3: 4)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="params and compute")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--response-frac", type=float, default=0.2,
                        help="share of each row's tokens that are the response (SST-2 rows: ~0.08)")
    args = parser.parse_args(argv)

    t_script = time.perf_counter()
    config = llama_config(vocab=args.vocab, hidden=args.hidden, layers=args.layers, dtype=args.dtype)
    print(f"jax {jax.__version__} ({jax.default_backend()}); Llama-shaped model: vocab {config.vocab_size}, "
          f"hidden {config.hidden_size}, {config.num_layers} layers, {args.dtype}, "
          f"{'full fine-tuning' if args.full else 'LoRA q/v'}; batch {args.batch} x {args.length}, "
          f"K = {args.safety_tokens} safety tokens")

    def objective(kind, ref="cached"):
        return bench_objective(kind, config.vocab_size, ref=ref, safety_tokens=args.safety_tokens,
                               header_len=args.header_len, seed=args.seed)

    graphdef, params, rest = build_model(config, lora=not args.full, seed=args.seed)
    batch = device_batch(chat_batch(args.batch, args.length, config.vocab_size, response_frac=args.response_frac,
                                    seed=args.seed))
    pact = objective("pact")
    cached_batch = {**batch, **cached_refs(pact, graphdef, params, rest, batch)}
    # The program gives full fine-tuning with an online reference its frozen copy of the initial weights.
    def every(b):  # as before loss_index: the vocabulary projection at every position
        return {k: v for k, v in b.items() if k != "loss_index"}

    variants = {
        "sft": (objective("sft"), "cached", batch),
        "pact cached": (pact, "cached", cached_batch),
        "pact online": (objective("pact", "online"), "online", batch),
        "sft, all pos": (objective("sft"), "cached", every(batch)),
        "pact c, all pos": (pact, "cached", every(cached_batch)),
    }

    runners, mem = {}, {}
    for name, (variant, ref, step_batch) in variants.items():
        step, state, frozen, seconds = compile_step(graphdef, fresh(params), rest, step_batch, variant,
                                                    lora=not args.full, ref=ref)
        mem[name] = memory(step)
        runners[name] = step_runner(step, state, frozen, step_batch)
        print(f"compiled {name} in {seconds:.1f}s")
    # One reference forward of the decoder stack (no gradient, no vocabulary projection),
    # the unit of online's extra work.
    forward = reference_program(graphdef, lambda reference, b: reference.hidden(b["inputs"], b["attention_mask"]))
    runners["1 ref forward"] = Runner(lambda: forward(params, rest, batch))
    time_interleaved(runners, warmup=args.warmup, repeats=args.repeats)

    sft, base_temp = runners["sft"], mem["sft"]["temp"]
    print()
    print(f"{args.repeats} interleaved rounds after {args.warmup} warm-up: step s is the median; time x is the "
          f"median over rounds of variant / sft; temp x is variant / sft")
    print(f"{'variant':<16}{'step s':>9}{'time x':>8}{'temp GB':>10}{'temp x':>8}{'args GB':>9}{'loss':>9}")
    for name, run in runners.items():
        if name in mem:
            m = mem[name]
            print(f"{name:<16}{run.median:>9.3f}{paired_ratio(run, sft):>8.2f}{m['temp']:>10.4f}"
                  f"{m['temp'] / base_temp:>8.2f}{m['args']:>9.4f}{float(run.result['loss']):>9.4f}")
        else:
            print(f"{name:<16}{run.median:>9.3f}{paired_ratio(run, sft):>8.2f}")
    cached_ok = paired_ratio(runners["pact cached"], sft) <= 1.10 and mem["pact cached"]["temp"] / base_temp <= 1.10
    print(f"cached within 1.10x of sft in time and temp memory: {'yes' if cached_ok else 'NO'}")
    print(f"vocabulary projections at the {int(batch['loss_index'].shape[1])} loss positions of each row instead of "
          f"all {args.length}: step time x {paired_ratio(sft, runners['sft, all pos']):.2f} (sft), "
          f"x {paired_ratio(runners['pact cached'], runners['pact c, all pos']):.2f} (pact cached)")
    online, cached, forward = runners["pact online"], runners["pact cached"], runners["1 ref forward"]
    extra = statistics.median((o - c) / f for o, c, f in zip(online.times, cached.times, forward.times))
    print(f"online - cached = {extra:.1f} reference forwards (median over rounds); online runs 2, on the full "
          f"and the response-only sequence")
    print("raw step seconds: " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in r.times) for k, r in runners.items()))
    print(f"total script time: {time.perf_counter() - t_script:.1f}s")


if __name__ == "__main__":
    main()
