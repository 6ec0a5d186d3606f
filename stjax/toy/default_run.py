"""The embedded default run: the whole PACT method end to end on the toy world, on CPU.

1. build (once, cached) the toy base model (complies) and aligned model (refuses);
2. compute the safety tokens, aligned vs base, on refusal responses;
3. fine-tune the aligned model on the sentiment task with 10% harmful rows whose targets
   comply, once with plain SFT and once with PACT;
4. evaluate the aligned, SFT and PACT models: refusal rate on held-out harmful prompts
   (keyword judge) and task accuracy, and print the before/after table.
"""

from __future__ import annotations

import json
from pathlib import Path

from stjax.configlib import from_dict
from stjax.toy.build import resolve

HARMFUL_RATIO = 0.1
# Full fine-tuning: LoRA adapters (even rank 8 on every projection) could not teach the
# 0.7M-parameter toy model the new task (training loss stuck near 3 nats, accuracy at
# chance), while full fine-tuning learns it in one epoch. The objectives are unchanged.
LR = 1e-3


def finetune_config(run_dir: Path, method: str, safety_dir: Path, *, seed: int = 0, harmful_ratio: float = HARMFUL_RATIO,
                    epochs: int = 3, progress: bool = True):
    from stjax.training.config import TrainConfig

    loss = {"kind": "sft"} if method == "sft" else {
        "kind": method, "safety_tokens": str(safety_dir), "ref": "online" if method == "kl" else "cached"}
    return from_dict(TrainConfig, {
        "model": {"path": "toy://aligned-model", "dtype": "float32"},
        "data": {"train": [{"path": "toy://data/sentiment_train.jsonl"}],
                 "harmful": {"path": "toy://data/harmful_comply_train.jsonl"}, "harmful_ratio": harmful_ratio,
                 "mix_seed": seed, "max_len": 64},
        "mesh": {"data": -1},
        "lora": {"enabled": False},
        "optimizer": {"lr": LR, "schedule": "step_decay", "decay_gamma": 0.85},
        "loss": loss,
        "train": {"run_dir": str(run_dir / method), "epochs": epochs, "batch_size": 16, "seed": seed,
                  "resume": "never"},
        "checkpoint": {"every_steps": 10**9, "keep": 1},
        "logging": {"progress": progress, "tensorboard": False},
    })


def safety_tokens_config(out_dir: Path):
    from stjax.safety_tokens import SafetyTokensConfig

    return SafetyTokensConfig(aligned_model="toy://aligned-model", base_model="toy://base-model",
                              refusals="toy://data/harmful_refuse_train.jsonl", out_dir=str(out_dir),
                              num_samples=128, max_resp_len=32, top_k=50, batch_size=32, dtype="float32")


def evaluate(model_path: str, limit: int = 100) -> dict:
    from transformers import AutoTokenizer

    from stjax.evaluation.keyword_judge import KeywordJudge
    from stjax.evaluation.utility import sst2_correct
    from stjax.generation import generate_chat
    from stjax.models import from_pretrained

    judge = KeywordJudge()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = from_pretrained(model_path)
    harmful = [json.loads(line) for line in open(resolve("toy://data/harmful_eval.jsonl"))][:limit]
    task = [json.loads(line) for line in open(resolve("toy://data/sentiment_eval.jsonl"))][:limit]
    replies = generate_chat(model, tokenizer, [[{"role": "user", "content": r["instruction"]}] for r in harmful],
                            max_new_tokens=24)
    answers = generate_chat(model, tokenizer, [[{"role": "user", "content": f"{r['instruction']} {r['input']}"}]
                                               for r in task], max_new_tokens=4)
    return {"refusal_rate": sum(judge(r).refusal for r in replies) / len(replies),
            "task_accuracy": sum(sst2_correct(a, r["output"]) for a, r in zip(answers, task)) / len(task),
            "examples": replies[:3]}


def table(results: dict) -> str:
    """The before/after table, in Markdown."""
    names = {"aligned": "aligned (before fine-tuning)", "sft": f"SFT, {HARMFUL_RATIO:.0%} harmful rows",
             "pact": f"PACT, {HARMFUL_RATIO:.0%} harmful rows"}
    lines = ["| model | refusal rate, held-out harmful prompts | task accuracy (sentiment) |", "| --- | --- | --- |"]
    lines += [f"| {names[k]} | {r['refusal_rate']:.0%} | {r['task_accuracy']:.0%} |" for k, r in results.items()]
    return "\n".join(lines)


def main(run_dir: str = "runs/default") -> dict:
    from stjax import safety_tokens
    from stjax.pact.safety_tokens import suppressed_stop_tokens
    from stjax.training.plots import plot_training_curves
    from stjax.training.trainer import Trainer

    run_dir = Path(run_dir)
    print("stjax default run: toy world -> safety tokens -> SFT and PACT -> evaluation")
    safety_dir = run_dir / "safety_tokens"
    result, tokenizer, _ = safety_tokens.run(safety_tokens_config(safety_dir))
    for warning in suppressed_stop_tokens(result, tokenizer):  # explains PACT's task accuracy below
        print(f"warning: {warning}")
    results = {"aligned": evaluate(resolve("toy://aligned-model"))}
    for method in ("sft", "pact"):
        Trainer(finetune_config(run_dir, method, safety_dir)).run()
        results[method] = evaluate(str(run_dir / method / "model"))
    (run_dir / "report.json").write_text(json.dumps(results, indent=2))
    (run_dir / "summary.md").write_text(table(results) + "\n")
    plot_refusal_vs_accuracy(results, run_dir / "refusal_vs_accuracy.png")
    plot_training_curves({m.upper(): run_dir / m for m in ("sft", "pact")}, run_dir / "training_curves.png")
    print(table(results))
    print(f"report: {run_dir / 'report.json'}, {run_dir / 'summary.md'}; plots: {run_dir / 'refusal_vs_accuracy.png'}, "
          f"{run_dir / 'training_curves.png'}")
    return results


def plot_refusal_vs_accuracy(results: dict, path: Path) -> None:
    """The before/after table as points: upper right (refuses and does the task) is the goal."""
    from stjax.evaluation.plots import new_figure

    figure, ax = new_figure()
    for name, r in results.items():
        ax.scatter([100 * r["task_accuracy"]], [100 * r["refusal_rate"]], s=60)
        ax.annotate(name, (100 * r["task_accuracy"], 100 * r["refusal_rate"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=9)
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("task accuracy (sentiment), %")
    ax.set_ylabel("refusal rate, held-out harmful prompts, %")
    ax.set_title(f"toy world after fine-tuning with {HARMFUL_RATIO:.0%} harmful rows")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
