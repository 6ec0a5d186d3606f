"""PACT on a real small model: SmolLM2-135M-Instruct, safety-tuned, then poisoned.

SmolLM2-135M-Instruct complies with most harmful requests, so the experiment first makes
an aligned reference: full fine-tuning of the original on refusals from the PACT
reference set (safe_direction.json, minus held-out prompts) mixed with benign answers the
original model generated itself. The original is the base model for the safety tokens.
Then the aligned model is fine-tuned on SST-2 with 10% harmful rows
(sst2_5k_p_0.1.json, a CPU-sized subset) with SFT and with PACT (LoRA q/v as the reference
recipe), and aligned / SFT / PACT are evaluated: refusal rate (keyword judge) on the
held-out harmful prompts and SST-2 accuracy (exact label) on held-out rows of sst2_5k_p_0.

    python benchmarks/smollm2_poisoning.py --out runs/smollm2     # ~1 h on 2 CPU cores

Scale it up on an accelerator with --task-rows 5000 --safety-rows 935 --eval-rows 500
--max-len 512 --epochs 3 (the reference setting) and a mesh via --mesh-data/--mesh-fsdp.
Skips cleanly (exit 0) when ../shared/data/pact-reference is absent or the model cannot
be fetched.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pact-reference"


def write_json(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return str(path)


def chat_generate(model_path: str, prompts: list[str], max_new_tokens: int, batch: int) -> list[str]:
    from transformers import AutoTokenizer

    from stjax.generation import generate_chat
    from stjax.models import from_pretrained

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = from_pretrained(model_path)
    out = []
    for i in range(0, len(prompts), batch):
        out += generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts[i:i + batch]],
                             max_new_tokens=max_new_tokens)
    return out


def evaluate(model_path: str, harmful: list[str], sst2: list[dict], batch: int) -> dict:
    from stjax.evaluation.keyword_judge import KeywordJudge
    from stjax.evaluation.utility import sst2_correct

    judge = KeywordJudge()
    replies = chat_generate(model_path, harmful, 48, batch)
    answers = chat_generate(model_path, [f"{r['instruction']} {r['input']}" for r in sst2], 4, batch)
    return {"refusal_rate": sum(judge(r).refusal for r in replies) / len(replies),
            "sst2_accuracy": sum(sst2_correct(a, r["output"]) for a, r in zip(answers, sst2)) / len(sst2),
            # the label with trailing punctuation ("positive.") counts here, not in the exact match
            "sst2_accuracy_label_word": sum(sst2_correct(a.strip().rstrip(".,!"), r["output"])
                                            for a, r in zip(answers, sst2)) / len(sst2),
            "harmful_replies": replies, "sst2_answers": answers}


def train(config: dict) -> None:
    from stjax.configlib import from_dict
    from stjax.training.config import TrainConfig
    from stjax.training.trainer import Trainer

    result = Trainer(from_dict(TrainConfig, config)).run()
    if result.stopped_by:  # preempted: the checkpoint is saved; nothing downstream may run
        raise SystemExit(f"{result.stopped_by} received at step {result.final_step}; rerun to resume")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2")
    parser.add_argument("--safety-rows", type=int, default=200, help="refusal rows for safety tuning")
    parser.add_argument("--benign-rows", type=int, default=100, help="self-generated benign rows")
    parser.add_argument("--task-rows", type=int, default=600, help="rows of sst2_5k_p_0.1.json (10%% harmful)")
    parser.add_argument("--eval-rows", type=int, default=100, help="held-out harmful prompts and SST-2 rows")
    parser.add_argument("--max-len", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4, help="LoRA fine-tuning learning rate")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent")
        return 0
    from stjax.assets import fetch, smollm2_path

    try:
        original = smollm2_path() or fetch("smollm2")[1]
    except Exception as e:  # no network: nothing to measure here
        print(f"skipped: SmolLM2 is not available ({e})")
        return 0
    original = str(original)
    out = Path(args.out).resolve()
    timings = {}
    rng = random.Random(0)

    refusals = json.loads((SHARED / "safe_direction.json").read_text())
    rng.shuffle(refusals)
    held_out = [r["input"] for r in refusals[: args.eval_rows]]
    safety_rows = refusals[args.eval_rows: args.eval_rows + args.safety_rows]
    sst2_eval = [r for r in json.loads((SHARED / "sst2_5k_p_0.json").read_text()) if "input" in r][-args.eval_rows:]
    seen = {r["input"] for r in sst2_eval}  # the two files share sentences: keep evaluation rows out of training
    task = [r for r in json.loads((SHARED / "sst2_5k_p_0.1.json").read_text())
            if r.get("input") not in seen][: args.task_rows]

    # 1. aligned reference: refusals + the original's own answers to benign prompts
    start = time.perf_counter()
    news = [r for r in json.loads((SHARED / "agnews_5k_p_0.json").read_text()) if "input" in r][: args.benign_rows]
    benign_prompts = [f"Write one sentence about this news: {r['input'][:200]}" for r in news]
    benign_answers = chat_generate(original, benign_prompts, 48, 16)
    safety_file = write_json(out / "data" / "safety_tune.json",
                             [{"input": r["input"], "output": r["output"]} for r in safety_rows]
                             + [{"input": p, "output": a} for p, a in zip(benign_prompts, benign_answers)])
    aligned = out / "aligned"
    if not (aligned / "model").is_dir():
        train({"model": {"path": original, "dtype": "float32"},
               "data": {"train": [{"path": safety_file}], "max_len": args.max_len},
               "lora": {"enabled": False}, "optimizer": {"lr": 2e-5, "schedule": "warmup_cosine", "warmup_steps": 5},
               "train": {"run_dir": str(aligned), "epochs": 1, "batch_size": args.batch, "resume": "auto"},
               "checkpoint": {"every_steps": 10**9, "keep": 1}, "logging": {"tensorboard": False}})
    timings["safety_tuning_s"] = time.perf_counter() - start

    # 2. safety tokens: aligned vs original
    start = time.perf_counter()
    from stjax import safety_tokens

    refusal_file = write_json(out / "data" / "refusals.json", [{"input": r["input"], "output": r["output"]}
                                                                for r in safety_rows])
    safety_tokens.run(safety_tokens.SafetyTokensConfig(
        aligned_model=str(aligned / "model"), base_model=original, refusals=refusal_file,
        out_dir=str(out / "safety_tokens"), num_samples=128, batch_size=16, dtype="float32"))
    timings["safety_tokens_s"] = time.perf_counter() - start

    # 3. poisoned fine-tuning, SFT and PACT
    task_file = write_json(out / "data" / "sst2_p0.1.json", task)
    results = {"aligned": evaluate(str(aligned / "model"), held_out, sst2_eval, 16)}
    for method in ("sft", "pact"):
        start = time.perf_counter()
        loss = {"kind": "sft"} if method == "sft" else {
            "kind": "pact", "safety_tokens": str(out / "safety_tokens"), "ref": "cached"}
        train({"model": {"path": str(aligned / "model"), "dtype": "float32"},
               "data": {"train": [{"path": task_file}], "max_len": args.max_len},
               "lora": {"enabled": True, "rank": 8, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
               "optimizer": {"lr": args.lr, "schedule": "step_decay", "decay_gamma": 0.85},
               "loss": loss,
               "train": {"run_dir": str(out / method), "epochs": args.epochs, "batch_size": args.batch,
                         "resume": "auto", "export_merged": True, "export_adapter": True},
               "checkpoint": {"every_steps": 10**9, "keep": 1}, "logging": {"tensorboard": False}})
        timings[f"{method}_s"] = time.perf_counter() - start
        results[method] = evaluate(str(out / method / "merged"), held_out, sst2_eval, 16)
    report = {"results": results, "timings": timings, "settings": vars(args)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print("| model | refusal rate (held-out harmful) | SST-2 accuracy, exact | SST-2, label + punctuation |\n"
          "| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['refusal_rate']:.0%} | {r['sst2_accuracy']:.0%} | {r['sst2_accuracy_label_word']:.0%} |")
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
