"""Compile time and step time of the train step with the decoder layers in a Python loop
against the same layers stacked under `lax.scan` (`model.scan_layers: true`).

The model is a random Llama-shaped `init_model` (`--hidden`, `--layers`, `--vocab`: 32 layers
as Llama-3.1-8B, at a small width so two CPU cores compile it in seconds to minutes); the step
is the trainer's program (AdamW with clipping, LoRA q/v or full fine-tuning, 1-device mesh) for
SFT and PACT with the cached and the online reference, each compiled for one chat-like batch
(`--batch` x `--length`). Compile time is `lower(...).compile()` of the whole step, the part of
start-up that grows with the layer count; step time is the median of interleaved repeats after
a warm-up, and the loss of the first step is printed for both layouts (they must agree: the
layers compute the same thing). A loop hands XLA `layers` copies of the layer; a scan hands it
one, so its compile time barely grows with depth.

    python benchmarks/scan_layers.py                          # 32 layers, hidden 256
    python benchmarks/scan_layers.py --layers 8 --methods sft --repeats 2   # a quick look
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import (
    bench_objective, build_model, cached_refs, chat_batch, compile_step, device_batch, fresh, llama_config,
    paired_ratio, step_runner, time_interleaved,
)




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=["sft", "pact_cached", "pact_online"],
                        choices=["sft", "pact_cached", "pact_online"])
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA q/v")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    lora = not args.full
    host = chat_batch(args.batch, args.length, args.vocab)
    print(f"{args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, batch {args.batch} x {args.length}, "
          f"{'LoRA q/v' if lora else 'full fine-tuning'}")
    print("| step | compile loop (s) | compile scan (s) | compile scan/loop | step scan/loop | first loss loop | scan |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method in args.methods:
        kind, _, ref = method.partition("_")
        ref = ref or "cached"
        objective = bench_objective(kind, args.vocab, ref=ref)
        compile_s, runners, first = {}, {}, {}
        for layout in ("loop", "scan"):
            config = llama_config(vocab=args.vocab, hidden=args.hidden, layers=args.layers)
            graphdef, params, rest = build_model(config.replace(scan_layers=layout == "scan"), lora=lora)
            batch = dict(host)
            if objective.needs_reference and ref == "cached":
                batch.update(cached_refs(objective, graphdef, params, rest, device_batch(host)))
            batch = device_batch(batch)
            compiled, state, frozen, compile_s[layout] = compile_step(graphdef, fresh(params), rest, batch, objective,
                                                                      lora=lora, ref=ref)
            runners[layout] = step_runner(compiled, state, frozen, batch)
            runners[layout](record=False)
            first[layout] = float(runners[layout].result["loss"])
        time_interleaved(runners, warmup=1, repeats=args.repeats)
        print(f"| {method} | {compile_s['loop']:.1f} | {compile_s['scan']:.1f} | "
              f"{compile_s['scan'] / compile_s['loop']:.2f} | {paired_ratio(runners['scan'], runners['loop']):.2f} | "
              f"{first['loop']:.6f} | {first['scan']:.6f} |", flush=True)
        if not np.isclose(first["loop"], first["scan"], rtol=1e-4):
            print(f"error: {method}: the scanned layers' loss {first['scan']} differs from the loop's {first['loop']}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
