"""Packed rows against power-of-two buckets: positions computed per real token, steps and
SFT epoch time, on the reference SST-2 mix.

The data is `sst2_5k_p_0.1.json` (../shared/data/pact-reference; 10% harmful rows) in
SmolLM2-135M-Instruct's chat template (`stjax fetch smollm2`), tokenized as the trainer
tokenizes it. For each `--max-len`, the bucketed plan (`BatchIterator`, `--batch` examples a
step) and the packed plan (`PackedBatchIterator`, `--batch` rows of max_len a step) of one
epoch give the positions every step computes over the real tokens of the data (1.00: no
padding) and the steps an epoch takes.

Epoch time: the train step (the trainer's program: AdamW, LoRA q/v, loss positions
gathered; SFT, or PACT with `--loss pact_cached` / `pact_online`: the cached reference's
arrays ride in each batch, the online one runs the full-context and response-only reference
passes in the step, per segment on packed rows) of a random Llama-shaped model (`--vocab`, `--hidden`, `--layers`; the vocabulary of
SmolLM2 by default) is compiled for every batch width the plans use and timed on real batches
of that width (interleaved rounds, medians); an epoch costs the sum over its steps of their
width's step time. Packed rows attend within each example, but the attention runs over the
whole row (its mask is block-diagonal), so the epoch ratio also shows what that costs.

    python benchmarks/packing.py                       # max_len 128 and 256, batch 8
    python benchmarks/packing.py --max-len 512 --batch 16
    python benchmarks/packing.py --loss pact_online --max-len 256

Skips (exit 0) when the data or the tokenizer is absent.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import jax

from _common import (
    bench_objective, build_model, cached_refs, compile_step, device_batch, fresh, llama_config, step_runner,
    time_interleaved,
)
from stjax.data.batching import BatchIterator
from stjax.data.packing import PackedBatchIterator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pact-reference"


def tokenized_mix(max_len: int):
    from stjax.assets import smollm2_path
    from stjax.data.sources import read_conversations
    from stjax.data.tokenize import tokenize_conversations
    from stjax.models.sections import load_tokenizer

    conversations = read_conversations(str(SHARED / "sst2_5k_p_0.1.json"))
    tokenizer = load_tokenizer(str(smollm2_path()))
    examples, _ = tokenize_conversations(conversations, tokenizer, max_len)
    return examples


def epoch_widths(batches) -> tuple[collections.Counter, dict[int, dict]]:
    """One epoch: width -> its steps at that width, and width -> one real batch of it."""
    widths, samples = collections.Counter(), {}
    for _ in range(batches.batches_per_epoch):
        batch = next(batches)
        widths[batch["inputs"].shape[1]] += 1
        samples.setdefault(batch["inputs"].shape[1], batch)
    return widths, samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-len", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=8, help="examples a step (bucketed), rows a step (packed)")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loss", choices=["sft", "pact_cached", "pact_online"], default="sft")
    args = parser.parse_args(argv)
    if not (SHARED / "sst2_5k_p_0.1.json").is_file():
        print(f"skipped: {SHARED / 'sst2_5k_p_0.1.json'} is absent")
        return 0
    from stjax.assets import smollm2_path

    if smollm2_path() is None:
        print("skipped: the SmolLM2 tokenizer is absent (stjax fetch smollm2)")
        return 0
    config = llama_config(vocab=args.vocab, hidden=args.hidden, layers=args.layers)
    ref = "online" if args.loss == "pact_online" else "cached"
    objective = bench_objective("sft" if args.loss == "sft" else "pact", args.vocab, ref=ref)
    graphdef, params, rest = build_model(config, lora=True)
    print(f"SST-2 mix (sst2_5k_p_0.1.json, SmolLM2 chat template); {args.loss} step of a random model: vocab {args.vocab}, "
          f"hidden {args.hidden}, {args.layers} layers, LoRA q/v, float32, {jax.devices()[0].platform}")
    print(f"{'max_len':>7} {'layout':<9} {'steps':>6} {'rows x width a step':<22} {'computed/real':>13} "
          f"{'epoch s':>9} {'x bucketed':>10}")
    for max_len in args.max_len:
        examples = tokenized_mix(max_len)
        real = sum(len(e.tokens) - 1 for e in examples)
        layouts = {
            "bucketed": BatchIterator(examples, args.batch, max_len, seed=0, process_index=0, process_count=1),
            "packed": PackedBatchIterator(examples, args.batch, max_len, seed=0, process_index=0, process_count=1),
        }
        rows = {}
        for name, batches in layouts.items():
            steps = batches.batches_per_epoch
            widths, samples = epoch_widths(batches)
            runners = {}
            for width, batch in sorted(samples.items()):
                batch = device_batch(batch)
                if ref == "cached" and objective.needs_reference:  # the arrays CachedBatches adds
                    batch.update(cached_refs(objective, graphdef, params, rest, batch))
                compiled, state, frozen, _ = compile_step(graphdef, fresh(params), rest, batch, objective, lora=True,
                                                          ref=ref)
                runners[width] = step_runner(compiled, state, frozen, batch)
            time_interleaved(runners, warmup=1, repeats=args.repeats)
            epoch = sum(count * runners[width].median for width, count in widths.items())
            computed = sum(count * args.batch * width for width, count in widths.items())
            shape = ", ".join(f"{args.batch}x{w} ({c})" for w, c in sorted(widths.items()))
            rows[name] = (steps, shape, computed / real, epoch)
        for name, (steps, shape, ratio, epoch) in rows.items():
            print(f"{max_len:>7} {name:<9} {steps:>6} {shape[:22]:<22} {ratio:>13.2f} {epoch:>9.1f} "
                  f"{epoch / rows['bucketed'][3]:>10.2f}")
        if len(rows["bucketed"][1]) > 22:
            print(f"{'':>7} bucketed widths (steps): {rows['bucketed'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
