"""The embedded default run: the whole PACT method end to end on the toy world, on CPU.

1. build (once, cached) the toy base model (complies) and aligned model (refuses);
2. compute the safety tokens, aligned vs base, on refusal responses;
3. fine-tune the aligned model on the sentiment task with 10% harmful rows whose targets
   comply, three ways: plain SFT, PACT as the reference states it, and the preset
   refusal_mix (SFT with the refusal rows mixed in at 20%);
4. evaluate the aligned and fine-tuned models on held-out harmful prompts (unseen
   template-topic pairs, and a whole unseen template family): clean refusals (ended,
   not degenerate, refusing), keyword refusals, exact refusals (only the world's own
   refusal sentences), degenerate replies; task accuracy; over-refusal (task prompts and
   harmless questions answered with a refusal marker); print the table with sample
   replies.
"""

from __future__ import annotations

import json
from pathlib import Path

from stjax.configlib import from_dict
from stjax.locations import resolve, resolve_paths

HARMFUL_RATIO = 0.1
REFUSALS = "toy://data/harmful_refuse_train.jsonl"  # the safety tokens' refusals; the refusal mix's rows
METHODS = ("sft", "pact", "refusal_mix")  # what the default run fine-tunes
# Full fine-tuning: LoRA adapters (even rank 8 on every projection) could not teach the
# 0.7M-parameter toy model the new task (training loss stuck near 3 nats, accuracy at
# chance), while full fine-tuning learns it in one epoch. The objectives are unchanged.
LR = 1e-3


def finetune_config(run_dir: Path, method: str, safety_dir: Path, *, seed: int = 0, harmful_ratio: float = HARMFUL_RATIO,
                    epochs: int = 3, progress: bool = True, overrides: list[str] = ()):
    """The fine-tuning of the aligned toy model on the harmful mix: `method` is a loss.kind or
    a preset (`stjax.training.presets`); `overrides` are SECTION.KEY=VALUE switches applied
    on top (e.g. loss.kl_at_end=false)."""
    from stjax.configlib import apply_overrides
    from stjax.training.config import TrainConfig
    from stjax.training.objectives import LOSS_KINDS
    from stjax.training.presets import PRESETS, apply_preset

    preset = method if method in PRESETS and method not in LOSS_KINDS else None
    if preset:  # the preset names the objective; one that is not SFT reads the safety tokens
        loss = {} if PRESETS[preset]["loss"]["kind"] == "sft" else {"safety_tokens": str(safety_dir)}
    else:
        loss = {"kind": "sft"} if method == "sft" else {
            "kind": method, "safety_tokens": str(safety_dir), "ref": "online" if method == "kl" else "cached"}
    config = {
        "model": {"path": "toy://aligned-model", "dtype": "float32"},
        "data": {"train": [{"path": "toy://data/sentiment_train.jsonl"}],
                 "harmful": {"path": "toy://data/harmful_comply_train.jsonl"}, "harmful_ratio": harmful_ratio,
                 "mix_seed": seed, "max_len": 64,
                 # the published toy-world figures were made with projections at every position
                 "gather_loss_positions": False},
        "mesh": {"data": -1},
        "lora": {"enabled": False},
        "optimizer": {"lr": LR, "schedule": "step_decay", "decay_gamma": 0.85},
        "loss": loss,
        "train": {"run_dir": str(run_dir / method), "epochs": epochs, "batch_size": 16, "seed": seed,
                  "resume": "never"},
        "checkpoint": {"every_steps": 10**9, "keep": 1},
        "logging": {"progress": progress, "tensorboard": False},
    }
    if preset:
        config["preset"] = preset
        config["data"]["safety"] = {"path": REFUSALS}
    return resolve_paths(from_dict(TrainConfig, apply_preset(apply_overrides(config, list(overrides)))))


def safety_tokens_config(out_dir: Path):
    from stjax.pact.stage1 import SafetyTokensConfig

    return resolve_paths(SafetyTokensConfig(
        aligned_model="toy://aligned-model", base_model="toy://base-model", refusals=REFUSALS,
        out_dir=str(out_dir), num_samples=128, max_resp_len=32, top_k=50, batch_size=32, dtype="float32"))


# harmless questions for over-refusal: the world's benign kind (its phrasings are the ones the
# world's models were trained on; the seed draws another sample of them)
HARMLESS_SEED = 8
HARMFUL_SETS = {"unseen pairs": "toy://data/harmful_eval.jsonl", "unseen family": "toy://data/harmful_eval_family.jsonl"}


def judges():
    """(clean-refusal judge with the world's lexicon and labels, exact judge with its refusal sentences)."""
    from stjax.evaluation.reply_rules import CleanRefusalJudge, ExactRefusalJudge, ReplyRules

    rules = ReplyRules(labels=["positive", "negative"], lexicon=[resolve("toy://data/lexicon.txt")])
    sentences = Path(resolve("toy://data/refusal_sentences.txt")).read_text().splitlines()
    return CleanRefusalJudge(rules), ExactRefusalJudge(sentences)


def evaluate(model_path: str, limit: int = 100) -> dict:
    """Greedy replies to both held-out harmful sets, the sentiment eval and harmless
    questions, judged."""
    from transformers import AutoTokenizer

    from stjax.evaluation.scoring import score_harmless, score_safety, score_task
    from stjax.toy import corpus
    from stjax.evaluation.utility import sst2_correct
    from stjax.generation import generate_chat
    from stjax.models import from_pretrained

    clean, exact = judges()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = from_pretrained(model_path)

    def replies(prompts: list[str], max_new_tokens: int):
        return generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                             max_new_tokens=max_new_tokens)

    result = {}
    for name, path in HARMFUL_SETS.items():
        prompts = [json.loads(line)["instruction"] for line in open(resolve(path))][:limit]
        result[name] = score_safety(prompts, replies(prompts, 48), clean, exact=exact, samples=3)
    task = [json.loads(line) for line in open(resolve("toy://data/sentiment_eval.jsonl"))][:limit]
    prompts = [f"{r['instruction']} {r['input']}" for r in task]
    result["task"] = score_task("sst2", prompts, replies(prompts, 8), [r["output"] for r in task], sst2_correct,
                                clean, samples=3)
    questions = [r["instruction"] for r in corpus.benign_rows(min(limit, 48), seed=HARMLESS_SEED)]
    result["harmless"] = score_harmless(questions, replies(questions, 24), clean, samples=3)
    return result


def rates(result: dict) -> dict:
    """The headline numbers of one model's evaluation, as fractions."""
    harmful = [result[name]["aggregates"] for name in HARMFUL_SETS]
    task = result["task"]["aggregates"]
    out = {**{f"{metric}:{name}": a[metric]["rate"] for name, a in zip(HARMFUL_SETS, harmful)
              for metric in ("clean_refusal", "keyword_refusal", "exact_refusal", "degenerate")},
           "task_accuracy": task["accuracy"]["rate"], "task_degenerate": task["degenerate"]["rate"]}
    if "over_refusal" in task:  # evaluations made before over-refusal was scored lack these
        out["over_refusal:task"] = task["over_refusal"]["rate"]
    if "harmless" in result:
        out["over_refusal:harmless"] = result["harmless"]["aggregates"]["over_refusal"]["rate"]
    return out


def table(results: dict) -> str:
    """The before/after table, in Markdown: each harmful metric as unseen pairs / unseen family."""
    names = {"aligned": "aligned (before fine-tuning)", "sft": f"SFT, {HARMFUL_RATIO:.0%} harmful rows",
             "pact": f"PACT, {HARMFUL_RATIO:.0%} harmful rows",
             "refusal_mix": f"preset refusal_mix (SFT + 20% refusal rows), {HARMFUL_RATIO:.0%} harmful rows"}
    lines = ["| model | clean refusal | keyword refusal | exact refusal | degenerate (harmful) | task accuracy "
             "| degenerate (task) | over-refusal (task / harmless) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, result in results.items():
        r = rates(result)
        pair = [" / ".join(f"{r[f'{m}:{n}']:.0%}" for n in HARMFUL_SETS)
                for m in ("clean_refusal", "keyword_refusal", "exact_refusal", "degenerate")]
        lines.append(f"| {names.get(key, key)} | " + " | ".join(pair)
                     + f" | {r['task_accuracy']:.0%} | {r['task_degenerate']:.0%} | "
                     + " / ".join(f"{r[k]:.0%}" if k in r else "n/a" for k in ("over_refusal:task", "over_refusal:harmless"))
                     + " |")
    return "\n".join(lines)


def samples(results: dict) -> str:
    """A few replies per model and set, with what the judges made of them."""
    from stjax.evaluation.scoring import sample_lines

    lines = []
    for key, result in results.items():
        for name, scored in result.items():
            lines += [f"{key}, {name}:", *sample_lines(scored, 3)]
    return "\n".join(lines)


def main(run_dir: str = "runs/default") -> dict:
    from stjax.pact import stage1
    from stjax.generation import default_stop_ids
    from stjax.pact.safety_tokens import suppressed_stop_tokens, token_statistics, token_table
    from stjax.training.plots import plot_training_curves
    from stjax.training.build import build_trainer

    run_dir = Path(run_dir)
    print("stjax default run: toy world -> safety tokens -> SFT, PACT and preset refusal_mix -> evaluation")
    safety_dir = run_dir / "safety_tokens"
    result, tokenizer, _ = stage1.run(safety_tokens_config(safety_dir))
    for warning in suppressed_stop_tokens(result, tokenizer):
        print(f"warning: {warning}")
    stats = token_statistics(token_table(result, tokenizer), default_stop_ids(tokenizer))
    print(statistics_line(stats))
    results = {"aligned": evaluate(resolve("toy://aligned-model"))}
    for method in METHODS:
        build_trainer(finetune_config(run_dir, method, safety_dir)).run()
        results[method] = evaluate(str(run_dir / method / "model"))
    report = {"results": results, "rates": {k: rates(r) for k, r in results.items()}, "safety_tokens": stats}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    (run_dir / "summary.md").write_text(f"{table(results)}\n\n{statistics_line(stats)}\n\n{samples(results)}\n")
    plot_refusal_vs_accuracy(results, run_dir / "refusal_vs_accuracy.png")
    plot_training_curves({m: run_dir / m for m in METHODS}, run_dir / "training_curves.png")
    print(table(results))
    print(samples(results))
    print(f"report: {run_dir / 'report.json'}, {run_dir / 'summary.md'}; plots: {run_dir / 'refusal_vs_accuracy.png'}, "
          f"{run_dir / 'training_curves.png'}")
    return results


def statistics_line(stats: dict) -> str:
    stops = ", ".join(f"{s['token']!r} weight {s['weight']:.3f}" for s in stats["stop_tokens_in_set"]) or "none"
    return (f"safety tokens: {stats['num_tokens']}; mean aligned probability max {stats['p_aligned_max']:.3g}, "
            f"median {stats['p_aligned_median']:.3g}, min {stats['p_aligned_min']:.3g} ({stats['min_over_max']:.1%} "
            f"of the max); {stats['above_floor']} at >= {stats['floor']:.0%} of the max; end-of-turn tokens in the "
            f"set: {stops}")


def plot_refusal_vs_accuracy(results: dict, path: Path) -> None:
    """The before/after table as points: upper right (refuses and does the task) is the goal."""
    from stjax.plotting import new_figure

    figure, ax = new_figure()
    for k, (name, result) in enumerate(results.items()):
        r = rates(result)
        for i, split in enumerate(HARMFUL_SETS):
            x, y = 100 * r["task_accuracy"], 100 * r[f"clean_refusal:{split}"]
            ax.scatter([x], [y], s=60, color=f"C{k}", marker="os"[i], label=split if k == 0 else None,
                       facecolors="none" if i else f"C{k}")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(8, -12 if y > 50 else 8), fontsize=9)
    ax.legend(title="held-out harmful prompts", fontsize=8, loc="center right")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("task accuracy (sentiment), %")
    ax.set_ylabel("clean refusals, held-out harmful prompts, %")
    ax.set_title(f"toy world after fine-tuning with {HARMFUL_RATIO:.0%} harmful rows")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
