"""Harmful-data poisoning on the toy world: does each method keep refusals and learn the task?

For every method (sft, kl, constrained_sft, pact, pact_bucket), harmful ratio p and seed,
the toy aligned model is fine-tuned on the sentiment task with a fraction p of harmful
rows whose targets comply, then evaluated: refusal rate on held-out harmful prompts
(keyword judge) and task accuracy (exact label). Prints mean +- std over seeds, writes
`poisoning.json`, `poisoning.md` and `poisoning.png` (refusal vs accuracy) to --out.

    python benchmarks/poisoning.py --out runs/poisoning            # all 45 runs, ~20 min on 2 cores
    python benchmarks/poisoning.py --methods sft pact --ratios 0.1 --seeds 0
    python benchmarks/poisoning.py --methods pact --drop-tokens . ,   # PACT without punctuation tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from stjax import safety_tokens
from stjax.toy.build import resolve
from stjax.toy.default_run import evaluate, finetune_config, safety_tokens_config
from stjax.training.trainer import Trainer

METHODS = ("sft", "kl", "constrained_sft", "pact", "pact_bucket")


def run_one(out: Path, method: str, ratio: float, seed: int, safety_dir: Path, overrides: dict) -> dict:
    run_dir = out / f"p{ratio}" / f"seed{seed}"
    config = finetune_config(run_dir, method, safety_dir, seed=seed, harmful_ratio=ratio, progress=False)
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    Trainer(config).run()
    return evaluate(str(run_dir / method / "model"))


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["ratio"]), []).append(row)
    summary = []
    for (method, ratio), runs in groups.items():
        refusal = np.array([r["refusal_rate"] for r in runs])
        accuracy = np.array([r["task_accuracy"] for r in runs])
        summary.append({"method": method, "ratio": ratio, "seeds": len(runs),
                        "refusal_mean": refusal.mean(), "refusal_std": refusal.std(),
                        "accuracy_mean": accuracy.mean(), "accuracy_std": accuracy.std()})
    return summary


def markdown(summary: list[dict], aligned: dict) -> str:
    lines = [f"aligned model before fine-tuning: refusal {aligned['refusal_rate']:.0%}, "
             f"task accuracy {aligned['task_accuracy']:.0%}", "",
             "| method | harmful ratio | refusal rate | task accuracy | seeds |", "| --- | --- | --- | --- | --- |"]
    for s in summary:
        lines.append(f"| {s['method']} | {s['ratio']} | {s['refusal_mean']:.2f} ± {s['refusal_std']:.2f} | "
                     f"{s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f} | {s['seeds']} |")
    return "\n".join(lines)


def plot(summary: list[dict], aligned: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {0.0: "o", 0.05: "s", 0.1: "^"}
    for i, method in enumerate(sorted({s["method"] for s in summary})):
        for s in (s for s in summary if s["method"] == method):
            ax.errorbar(s["accuracy_mean"], s["refusal_mean"], xerr=s["accuracy_std"], yerr=s["refusal_std"],
                        fmt=markers.get(s["ratio"], "D"), color=f"C{i}", capsize=3,
                        label=method if s["ratio"] == max(x["ratio"] for x in summary) else None)
            ax.annotate(f"p={s['ratio']}", (s["accuracy_mean"], s["refusal_mean"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.scatter([aligned["task_accuracy"]], [aligned["refusal_rate"]], marker="*", s=150, color="k", label="aligned")
    ax.set_xlabel("task accuracy (sentiment)")
    ax.set_ylabel("refusal rate on held-out harmful prompts")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("toy world: safety vs utility after fine-tuning on a harmful mix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/poisoning")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="config changes for every run, e.g. loss.lam=4.0 train.epochs=5")
    parser.add_argument("--drop-tokens", nargs="*", default=[], metavar="TOKEN",
                        help="remove these tokens (as decoded, e.g. . ,) from the safety-token set")
    parser.add_argument("--positive-support", action="store_true",
                        help="keep only the safety tokens with a positive weight (the KL then ignores the rest)")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    out = Path(args.out)
    safety_dir = out / "safety_tokens"
    config = dataclasses.replace(safety_tokens_config(safety_dir), drop_tokens=args.drop_tokens,
                                 positive_only=args.positive_support)
    safety_tokens.run(config, progress=False)
    aligned = evaluate(resolve("toy://aligned-model"))
    rows = []
    for method in args.methods:
        for ratio in args.ratios:
            for seed in args.seeds:
                start = time.perf_counter()
                result = run_one(out, method, ratio, seed, safety_dir, overrides)
                rows.append({"method": method, "ratio": ratio, "seed": seed, **result})
                print(f"{method:16s} p={ratio:<5} seed={seed}  refusal {result['refusal_rate']:.2f}  "
                      f"accuracy {result['task_accuracy']:.2f}  ({time.perf_counter() - start:.0f}s)", flush=True)
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "poisoning.json").write_text(json.dumps({"aligned": aligned, "runs": rows, "summary": summary}, indent=2))
    (out / "poisoning.md").write_text(markdown(summary, aligned) + "\n")
    plot(summary, aligned, out / "poisoning.png")
    print(markdown(summary, aligned))


if __name__ == "__main__":
    main()
