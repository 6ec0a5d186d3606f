"""Harmful-data poisoning on the toy world: does each method keep refusals and learn the task?

For every method (sft, kl, constrained_sft, pact, pact_bucket), harmful ratio p and seed,
the toy aligned model is fine-tuned on the sentiment task with a fraction p of harmful
rows whose targets comply, then evaluated with the default run's judges: clean refusals
on both held-out harmful sets (unseen template-topic pairs, unseen template family), the
keyword rate beside them, degenerate replies, and task accuracy (exact label). Prints
mean +- std over seeds, writes `poisoning.json`, `poisoning.md` (with sample replies) and
`poisoning.png` (clean refusal vs accuracy) to --out.

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

from stjax.locations import resolve
from stjax.pact import stage1
from stjax.toy.default_run import HARMFUL_SETS, evaluate, finetune_config, rates, safety_tokens_config
from stjax.training.build import build_trainer

METHODS = ("sft", "kl", "constrained_sft", "pact", "pact_bucket")


def run_one(out: Path, method: str, ratio: float, seed: int, safety_dir: Path, overrides: dict) -> dict:
    run_dir = out / f"p{ratio}" / f"seed{seed}"
    config = finetune_config(run_dir, method, safety_dir, seed=seed, harmful_ratio=ratio, progress=False)
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    build_trainer(config).run()
    return evaluate(str(run_dir / method / "model"))


METRICS = [f"{m}:{split}" for m in ("clean_refusal", "keyword_refusal", "degenerate") for split in HARMFUL_SETS]
METRICS += ["task_accuracy", "task_degenerate"]


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["ratio"]), []).append(row)
    summary = []
    for (method, ratio), runs in groups.items():
        entry = {"method": method, "ratio": ratio, "seeds": len(runs)}
        for metric in METRICS:
            values = np.array([r["rates"][metric] for r in runs])
            entry[metric] = {"mean": float(values.mean()), "std": float(values.std())}
        summary.append(entry)
    return summary


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat["std"] >= 0.005 else f"{stat['mean']:.2f}"


def markdown(summary: list[dict], aligned: dict) -> str:
    a = rates(aligned)
    pairs, family = HARMFUL_SETS
    lines = [f"aligned model before fine-tuning: clean refusal {a[f'clean_refusal:{pairs}']:.0%} (unseen pairs) / "
             f"{a[f'clean_refusal:{family}']:.0%} (unseen family), task accuracy {a['task_accuracy']:.0%}", "",
             "| method | p | clean refusal, unseen pairs | clean refusal, unseen family | keyword refusal (pairs) "
             "| degenerate harmful replies (pairs) | task accuracy | degenerate task answers | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        cells = [s[f"clean_refusal:{pairs}"], s[f"clean_refusal:{family}"], s[f"keyword_refusal:{pairs}"],
                 s[f"degenerate:{pairs}"], s["task_accuracy"], s["task_degenerate"]]
        lines.append(f"| {s['method']} | {s['ratio']} | " + " | ".join(_cell(c) for c in cells) + f" | {s['seeds']} |")
    return "\n".join(lines)


def sample_replies(rows: list[dict]) -> str:
    """Seed 0's replies per method and ratio: what the numbers count."""
    from stjax.evaluation.scoring import sample_lines

    lines = []
    for row in rows:
        if row["seed"] == min(r["seed"] for r in rows):
            lines.append(f"{row['method']}, p={row['ratio']}, seed {row['seed']}:")
            lines += sample_lines(row["result"]["unseen pairs"], 2) + sample_lines(row["result"]["task"], 2)
    return "\n".join(lines)


def plot(summary: list[dict], aligned: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = next(iter(HARMFUL_SETS))
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {0.0: "o", 0.05: "s", 0.1: "^"}
    for i, method in enumerate(sorted({s["method"] for s in summary})):
        for s in (s for s in summary if s["method"] == method):
            acc, ref = s["task_accuracy"], s[f"clean_refusal:{pairs}"]
            ax.errorbar(acc["mean"], ref["mean"], xerr=acc["std"], yerr=ref["std"],
                        fmt=markers.get(s["ratio"], "D"), color=f"C{i}", capsize=3,
                        label=method if s["ratio"] == max(x["ratio"] for x in summary) else None)
            ax.annotate(f"p={s['ratio']}", (acc["mean"], ref["mean"]), fontsize=7, textcoords="offset points",
                        xytext=(4, 4))
    a = rates(aligned)
    ax.scatter([a["task_accuracy"]], [a[f"clean_refusal:{pairs}"]], marker="*", s=150, color="k", label="aligned")
    ax.set_xlabel("task accuracy (sentiment, exact label)")
    ax.set_ylabel("clean refusals, held-out harmful prompts (unseen pairs)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("toy world: safety vs utility after fine-tuning on a harmful mix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def rejudge(out: Path) -> None:
    """Scores the saved replies with today's judges: no model runs."""
    from stjax.evaluation.scoring import score_safety, score_task
    from stjax.evaluation.utility import sst2_correct
    from stjax.generation import Reply
    from stjax.toy.default_run import judges

    clean, exact = judges()

    def again(result: dict) -> dict:
        new = {}
        for name, scored in result.items():
            items = scored["items"]
            replies = [Reply(i["output"], i["ended"]) for i in items]
            prompts = [i["prompt"] for i in items]
            new[name] = (score_task("sst2", prompts, replies, [i["reference"] for i in items], sst2_correct, clean,
                                    samples=3) if name == "task" else
                         score_safety(prompts, replies, clean, exact=exact, samples=3))
        return new

    saved = json.loads((out / "poisoning.json").read_text())
    aligned = again(saved["aligned"])
    rows = [{**row, "result": again(row["result"])} for row in saved["runs"]]
    rows = [{**row, "rates": rates(row["result"])} for row in rows]
    write_outputs(out, aligned, rows)


def write_outputs(out: Path, aligned: dict, rows: list[dict]) -> None:
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "poisoning.json").write_text(json.dumps({"aligned": aligned, "runs": rows, "summary": summary}, indent=2))
    (out / "poisoning.md").write_text(markdown(summary, aligned) + "\n\n" + sample_replies(rows) + "\n")
    plot(summary, aligned, out / "poisoning.png")
    print(markdown(summary, aligned))


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
    parser.add_argument("--rejudge", action="store_true",
                        help="judge the replies saved in --out/poisoning.json again (after a judge changed)")
    args = parser.parse_args()
    if args.rejudge:
        return rejudge(Path(args.out))
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    out = Path(args.out)
    safety_dir = out / "safety_tokens"
    config = dataclasses.replace(safety_tokens_config(safety_dir), drop_tokens=args.drop_tokens,
                                 positive_only=args.positive_support)
    stage1.run(config, progress=False)
    aligned = evaluate(resolve("toy://aligned-model"))
    rows = []
    for method in args.methods:
        for ratio in args.ratios:
            for seed in args.seeds:
                start = time.perf_counter()
                result = run_one(out, method, ratio, seed, safety_dir, overrides)
                r = rates(result)
                rows.append({"method": method, "ratio": ratio, "seed": seed, "rates": r, "result": result})
                print(f"{method:16s} p={ratio:<5} seed={seed}  clean refusal "
                      + " / ".join(f"{r[f'clean_refusal:{split}']:.2f}" for split in HARMFUL_SETS)
                      + f"  keyword {r[f'keyword_refusal:{next(iter(HARMFUL_SETS))}']:.2f}  accuracy "
                      f"{r['task_accuracy']:.2f}  ({time.perf_counter() - start:.0f}s)", flush=True)
    write_outputs(out, aligned, rows)


if __name__ == "__main__":
    main()
