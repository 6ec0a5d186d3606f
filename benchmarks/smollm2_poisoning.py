"""PACT on a real small model: SmolLM2-135M-Instruct, safety-tuned, then poisoned.

SmolLM2-135M-Instruct complies with most harmful requests, so the experiment first makes
an aligned reference: full fine-tuning of the original on refusals from the PACT
reference set (safe_direction.json, minus held-out prompts) mixed with benign answers the
original model generated itself. The original is the base model for the safety tokens.
Then the aligned model is fine-tuned on SST-2 with 10% harmful rows
(sst2_5k_p_0.1.json, a CPU-sized subset) with SFT and with PACT (LoRA q/v as the reference
recipe), and aligned / SFT / PACT are evaluated: refusal rate (keyword judge) on the
held-out harmful prompts and SST-2 accuracy (exact label) on held-out rows of sst2_5k_p_0,
and over-refusal: the share of replies to SST-2 prompts and to held-out harmless
instructions (one-sentence AG News summaries) that carry a refusal marker.

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


def chat_generate(model_path: str, prompts: list[str], max_new_tokens: int, batch: int) -> list:
    """Greedy replies (stjax.generation.Reply: text, and whether a stop id ended it)."""
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


def generate_eval(model_path: str, prompts: dict[str, list[str]], batch: int, parts=None) -> dict:
    """The raw replies an evaluation judges (kept in report.json, so judges rerun for free):
    harmful prompts and harmless instructions get 48 new tokens, SST-2 prompts 8."""
    budget = {"harmful": 48, "sst2": 8, "benign": 48}
    return {part: [{"text": r.text, "ended": r.ended}
                   for r in chat_generate(model_path, prompts[part], budget[part], batch)]
            for part in (parts or prompts)}


def benign_prompts(rows: list[dict]) -> list[str]:
    """Harmless instructions: one-sentence summaries of AG News articles."""
    return [f"Write one sentence about this news: {r['input'][:200]}" for r in rows]


def sst2_prompt(row: dict) -> str:
    return f"{row['instruction']} {row['input']}"


def judge(raw: dict, harmful: list[str], sst2: list[dict]) -> dict:
    """Clean-refusal and keyword rates on the harmful replies, SST-2 accuracy (exact label,
    and label + punctuation) and the degenerate rates of both, with sample replies."""
    import importlib.util

    from stjax.evaluation.reply_rules import WORDFREQ, CleanRefusalJudge, ReplyRules
    from stjax.evaluation.scoring import score_safety, score_task
    from stjax.evaluation.utility import sst2_correct
    from stjax.generation import Reply

    lexicon = [WORDFREQ] if importlib.util.find_spec("wordfreq") else []
    rules = CleanRefusalJudge(ReplyRules(labels=["positive", "negative"], lexicon=lexicon))
    from stjax.evaluation.stats import rate

    safety = score_safety(harmful, [Reply(**r) for r in raw["harmful"]], rules)
    prompts, labels = [sst2_prompt(r) for r in sst2], [r["output"] for r in sst2]
    answers = [Reply(**a) for a in raw["sst2"]]
    task = score_task("sst2", prompts, answers, labels, sst2_correct, rules)
    loose = score_task("sst2", prompts, answers, labels, lambda a, ref: sst2_correct(a.strip().rstrip(".,!"), ref),
                       rules)
    # over-refusal: replies to harmless prompts that carry a refusal marker
    over = {part: rate(sum(rules(r["text"], r["ended"]).keyword_refusal for r in raw[part]), len(raw[part]))
            for part in ("sst2", "benign") if part in raw}
    return {"safety": safety, "sst2": task, "sst2_label_punct_accuracy": loose["aggregates"]["accuracy"],
            "over_refusal": over, "benign_samples": [r["text"] for r in raw.get("benign", [])[:3]], "lexicon": lexicon}


def table(results: dict) -> str:
    lines = ["| model | clean refusal | keyword refusal | degenerate (harmful) | SST-2 exact | SST-2 label + punct "
             "| degenerate (SST-2) | over-refusal (SST-2) | over-refusal (harmless) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        s, t, over = r["safety"]["aggregates"], r["sst2"]["aggregates"], r.get("over_refusal", {})
        cells = [f"{over[p]['rate']:.0%}" if p in over else "n/a" for p in ("sst2", "benign")]
        lines.append(f"| {name} | {s['clean_refusal']['rate']:.0%} | {s['keyword_refusal']['rate']:.0%} | "
                     f"{s['degenerate']['rate']:.0%} | {t['accuracy']['rate']:.0%} | "
                     f"{r['sst2_label_punct_accuracy']['rate']:.0%} | {t['degenerate']['rate']:.0%} | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def samples(results: dict) -> str:
    from stjax.evaluation.scoring import sample_lines

    lines = []
    for name, r in results.items():
        lines += [f"{name}, harmful:", *sample_lines(r["safety"]), f"{name}, SST-2:", *sample_lines(r["sst2"], 3)]
        lines += [f"{name}, harmless instructions:", *(f"- {text[:120]!r}" for text in r.get("benign_samples", []))]
    return "\n".join(lines)


def safety_token_table(directory: Path, tokenizer_path: str) -> dict:
    """The statistics that say whether the set is made of real refusal tokens."""
    from transformers import AutoTokenizer

    from stjax.generation import default_stop_ids
    from stjax.pact.safety_tokens import read_token_table, token_statistics

    rows = read_token_table(directory)
    stats = token_statistics(rows, default_stop_ids(AutoTokenizer.from_pretrained(tokenizer_path)))
    return {**stats, "tokens": rows}


def train(config: dict) -> None:
    from stjax.configlib import from_dict
    from stjax.training.config import TrainConfig
    from stjax.training.build import build_trainer

    result = build_trainer(from_dict(TrainConfig, config)).run()
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
    news = [r for r in json.loads((SHARED / "agnews_5k_p_0.json").read_text()) if "input" in r]
    eval_prompts = {"harmful": held_out, "sst2": [sst2_prompt(r) for r in sst2_eval],  # never trained on
                    "benign": benign_prompts(news[args.benign_rows: args.benign_rows + args.eval_rows])}
    aligned = out / "aligned"
    if not (aligned / "model").is_dir():  # a rerun (another --task-rows) reuses the aligned model
        tuning = benign_prompts(news[: args.benign_rows])
        benign_answers = [r.text for r in chat_generate(original, tuning, 48, 16)]
        safety_file = write_json(out / "data" / "safety_tune.json",
                                 [{"input": r["input"], "output": r["output"]} for r in safety_rows]
                                 + [{"input": p, "output": a} for p, a in zip(tuning, benign_answers)])
        train({"model": {"path": original, "dtype": "float32"},
               "data": {"train": [{"path": safety_file}], "max_len": args.max_len},
               "lora": {"enabled": False}, "optimizer": {"lr": 2e-5, "schedule": "warmup_cosine", "warmup_steps": 5},
               "train": {"run_dir": str(aligned), "epochs": 1, "batch_size": args.batch, "resume": "auto"},
               "checkpoint": {"every_steps": 10**9, "keep": 1}, "logging": {"tensorboard": False}})
    timings["safety_tuning_s"] = time.perf_counter() - start

    # 2. safety tokens: aligned vs original
    start = time.perf_counter()
    from stjax.pact import stage1

    refusal_file = write_json(out / "data" / "refusals.json", [{"input": r["input"], "output": r["output"]}
                                                                for r in safety_rows])
    if not (out / "safety_tokens" / "safety_tokens.safetensors").is_file():
        stage1.run(stage1.SafetyTokensConfig(
            aligned_model=str(aligned / "model"), base_model=original, refusals=refusal_file,
            out_dir=str(out / "safety_tokens"), num_samples=128, batch_size=16, dtype="float32"))
    timings["safety_tokens_s"] = time.perf_counter() - start

    # 3. poisoned fine-tuning, SFT and PACT (run directories per task size share the aligned model)
    task_file = write_json(out / "data" / f"sst2_p0.1_{args.task_rows}.json", task)
    runs = out / f"rows{args.task_rows}"
    raw = {"aligned": cached_eval(aligned / "eval_raw.json", str(aligned / "model"), eval_prompts)}
    for method in ("sft", "pact"):
        start = time.perf_counter()
        loss = {"kind": "sft"} if method == "sft" else {
            "kind": "pact", "safety_tokens": str(out / "safety_tokens"), "ref": "cached"}
        train({"model": {"path": str(aligned / "model"), "dtype": "float32"},
               "data": {"train": [{"path": task_file}], "max_len": args.max_len},
               "lora": {"enabled": True, "rank": 8, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
               "optimizer": {"lr": args.lr, "schedule": "step_decay", "decay_gamma": 0.85},
               "loss": loss,
               "train": {"run_dir": str(runs / method), "epochs": args.epochs, "batch_size": args.batch,
                         "resume": "auto", "export": ["adapter", "merged"]},
               "checkpoint": {"every_steps": 10**9, "keep": 1}, "logging": {"tensorboard": False}})
        raw[method] = cached_eval(runs / method / "eval_raw.json", str(runs / method / "merged"), eval_prompts)
        timings[f"{method}_s"] = time.perf_counter() - start
    results = {name: judge(r, held_out, sst2_eval) for name, r in raw.items()}
    report = {"results": results, "raw": raw, "timings": timings, "settings": vars(args),
              "safety_tokens": safety_token_table(out / "safety_tokens", str(aligned / "model"))}
    (runs / "report.json").write_text(json.dumps(report, indent=1))
    stats = report["safety_tokens"]
    print(table(results))
    print(samples(results))
    print(f"safety tokens: {stats['num_tokens']}, mean aligned p {stats['p_aligned_max']:.3g} (max) / "
          f"{stats['p_aligned_median']:.3g} (median) / {stats['p_aligned_min']:.3g} (min), "
          f"{stats['above_floor']} at >= 1% of the max, stop tokens in the set: {stats['stop_tokens_in_set']}")
    print(json.dumps(timings))
    return 0


def cached_eval(path: Path, model_path: str, prompts: dict[str, list[str]]) -> dict:
    """generate_eval's replies, read back from `path` when a run already made them; parts an
    older run did not generate (the harmless instructions) are generated and added."""
    raw = json.loads(path.read_text()) if path.is_file() else {}
    missing = [part for part in prompts if part not in raw]
    if missing:
        raw.update(generate_eval(model_path, prompts, 16, missing))
        path.write_text(json.dumps(raw))
    return raw


if __name__ == "__main__":
    sys.exit(main())
