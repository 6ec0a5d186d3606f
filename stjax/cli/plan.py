"""`stjax plan --config X.yaml [--topology v5e-8]`: will a run fit, and what will it cost?

Per-chip HBM for the config's mesh on a TPU topology, by part: weights (sharded by the
same logical-axis rules the trainer uses), gradients and Adam state (adapters only with
LoRA), activations under the configured remat policy, the PACT extras (safety-token
logits; cached reference arrays in the batch, or the frozen weight copy an online
reference needs with full fine-tuning), FSDP all-gather buffers and the loss's logit
chunk. Then step time and chip-hours from FLOPs at a stated MFU.

The model's sizes come from `model.path`/config.json; a Hub directory that is not on this
machine is fine for the models embedded in `stjax.planning.known_models` (Llama 3.1 8B, Qwen2.5 7B, base and
instruct), or give `--model-config file.json`.

Numbers are estimates (see docs/tpu.md for how they compare). Where libtpu is installed
(`pip install 'stjax[tpu]'`, no TPU needed), `--compile` also compiles the real train step
for the topology (`jax.experimental.topologies`) and reports XLA's own memory figures.
"""

from __future__ import annotations

import argparse
import json

from stjax.cli.common import resolve_locations


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--topology", default="v5e-8", help="a TPU slice (v4-8, v5e-8, v5p-8, v6e-8) or NVIDIA GPUs "
                        "(h100-1, h100-8, h200-8, a100-8, a100_40gb-8, l40s-4, l4-1); default v5e-8")
    parser.add_argument("--model-config", help="a config.json for the model (default: model.path's, or embedded)")
    parser.add_argument("--seq-len", type=float, help="mean padded batch width for time estimates (default: "
                        "estimated from the data's characters when local, else max_len)")
    parser.add_argument("--examples", type=int, help="training examples (default: counted when the data is local)")
    parser.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilization assumed (default 0.35)")
    parser.add_argument("--safety-tokens", type=int, default=50, help="K, safety tokens (PACT; default 50)")
    parser.add_argument("--price", type=float, help="$ per chip-hour, to print a cost")
    parser.add_argument("--compile", action="store_true",
                        help="also compile the train step for the topology with libtpu (compile-only, no TPU)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=32")
    args = parser.parse_args(argv)

    from stjax.models.config import ModelConfig
    from stjax.planning import (
        compiled_memory, count_examples, estimate, estimate_seq_len, model_hf_config, parse_topology, report,
        suggestions, topology_devices,
    )
    from stjax.training.config import load_train_config

    config = resolve_locations(load_train_config(args.config, args.overrides))
    topology = parse_topology(args.topology)
    hf, source = model_hf_config(config.model.path, args.model_config)
    model_config = ModelConfig.from_hf_dict(hf, source=source, param_dtype=config.model.dtype,
                                            compute_dtype=config.model.compute_dtype or config.model.dtype,
                                            remat=config.model.remat, scan_layers=config.model.scan_layers)
    seq_len = args.seq_len
    seq_source = None
    if seq_len is None:
        seq_len = estimate_seq_len(config)
        seq_source = "the data (characters / 4 + 40 template tokens, bucketed)" if seq_len else None
    examples = args.examples if args.examples is not None else count_examples(config)
    kwargs = {"seq_len": seq_len, "examples": examples, "mfu": args.mfu, "safety_tokens": args.safety_tokens}
    est = estimate(config, topology, model_config, **kwargs)
    if seq_source and not config.data.packing:
        est.seq_len_source = seq_source
    knobs = suggestions(config, topology, model_config, est, **kwargs)
    compiled = None
    if args.compile and topology.chip.gpu:
        compiled = ("not run (compile-only checks are for TPU slices; on GPUs, `stjax train` with "
                    "train.max_steps=1 on one card measures the real peak)")
    elif args.compile:
        try:
            import libtpu  # noqa: F401
        except ImportError:
            compiled = "unavailable (libtpu is not installed: pip install 'stjax[tpu]')"
        else:
            try:
                compiled = compiled_memory(config, model_config, topology_devices(topology),
                                           safety_tokens=args.safety_tokens)
            except Exception as e:  # noqa: BLE001 - report, keep the estimate
                compiled = f"failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    if args.json:
        print(json.dumps({"topology": topology.name, "mesh": est.mesh, "memory_bytes": est.memory,
                          "total_bytes": est.total_bytes, "hbm_bytes": topology.hbm_bytes, "fits": est.fits,
                          "errors": est.errors, "compiled": compiled, "params": est.params_total,
                          "trained_params": est.params_trained, "flops_per_step": est.flops_per_step,
                          "step_seconds": est.step_seconds, "steps": est.steps, "tokens_per_step": est.tokens_per_step,
                          "chip_hours": est.chip_hours},
                         indent=2))
    else:
        print(report(config, est, source, knobs, compiled, args.price))
    return 0
