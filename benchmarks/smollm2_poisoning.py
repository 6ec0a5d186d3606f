"""PACT on a real small model: SmolLM2-135M-Instruct, safety-tuned, then poisoned.

SmolLM2-135M-Instruct complies with most harmful requests, so the experiment first makes
an aligned reference: full fine-tuning of the original on 400 refusal rows of the PACT
reference set (safe_direction.json; never the held-out ones), balanced with benign answers
the original model itself generated, by rejection sampling (to 1000 SST-2 prompts, 225 AG
News topic questions and 225 one-sentence news summaries; a greedy reply, then up to 7
sampled ones, until one neither refuses, degenerates nor is cut off, and for SST-2 names exactly one
sentiment). The original is the base model for the safety tokens. Then the aligned model is
fine-tuned on SST-2 with 10% harmful rows (sst2_5k_p_0.1.json, a CPU-sized subset;
--harmful-ratio 0 for clean task data) in each
of the chosen settings (`SETTINGS`: SFT, PACT as the reference and its variants, LoRA q/v as
the reference recipe), and every model is evaluated: clean refusals on 100 held-out
harmful prompts, SST-2 accuracy (exact label, and label + punctuation) on held-out rows of
sst2_5k_p_0, and over-refusal: the share of replies to those SST-2 prompts and to 100
held-out harmless instructions (one-sentence AG News summaries) that carry a refusal
marker. Every stage is cached under --out/reference_s{S}_b{B}[_sst{N}x{T}][_t{tries}]/ and resumes; the
task runs write rows{N}[_p{ratio}][_seed{S}]/report.json and safety_vs_sst2.png (clean
refusal vs accuracy; no suffix for the default ratio 0.1 and seed 0).

    python benchmarks/smollm2_poisoning.py --reference-only             # the aligned reference, ~1 h on 2 cores
    python benchmarks/smollm2_poisoning.py --settings sft pact          # + one run each, ~25-35 min on 2 cores

Scale it up on an accelerator with --task-rows 5000 --eval-rows 500 --max-len 512
--epochs 3 (the reference setting). Skips cleanly (exit 0) when
../shared/data/pact-reference is absent or the model cannot be fetched.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import sys
import time
from pathlib import Path

from _smollm2_report import judge, plot, safety_token_table, samples, seed_table, sst2_prompt, table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pact-reference"


NO_END = ["loss.kl_at_end=false"]
REFUSAL_MIX = ["data.safety={path: 'REFUSALS'}", "data.safety_ratio=0.2"]  # the safety-tuning refusal rows
# name -> (loss.kind, config switches), as in benchmarks/poisoning.py; "pact" is the reference's objective
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "sft": ("sft", []),
    "sft + refusal mix 20%": ("sft", REFUSAL_MIX),  # preset refusal_mix
    "pact": ("pact", []),
    "pact, no KL at end": ("pact", NO_END),
    "pact, no KL at end, lambda 4": ("pact", NO_END + ["loss.lam=4.0"]),
    "pact, no KL at end + refusal mix 20%": ("pact", NO_END + REFUSAL_MIX),
    "kl": ("kl", []),
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_")


def write_json(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return str(path)


@functools.lru_cache(maxsize=1)
def load_chat_model(model_path: str):
    """The model and tokenizer the last generation used: the reference's rejection sampling
    asks for the original once per round and token budget."""
    from transformers import AutoTokenizer

    from stjax.models import from_pretrained

    return from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path)


def chat_generate(model_path: str, prompts: list[str], max_new_tokens: int, batch: int, **sampling) -> list:
    """Replies (stjax.generation.Reply: text, and whether a stop id ended it), greedy unless
    `sampling` sets a temperature (and top_p, seed)."""
    from stjax.generation import generate_chat

    model, tokenizer = load_chat_model(model_path)
    out = []
    for i in range(0, len(prompts), batch):
        out += generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts[i:i + batch]],
                             max_new_tokens=max_new_tokens, **sampling)
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


def train(config: dict) -> None:
    from stjax.configlib import from_dict
    from stjax.training.config import TrainConfig
    from stjax.training.build import build_trainer

    result = build_trainer(from_dict(TrainConfig, config)).run()
    if result.stopped_by:  # preempted: the checkpoint is saved; nothing downstream may run
        raise SystemExit(f"{result.stopped_by} received at step {result.final_step}; rerun to resume")


def usable_answer(reply, rules, labels: tuple[str, ...] = (), prompt: str = "") -> str | None:
    """A benign answer worth teaching: no refusal marker, not degenerate as an answer to its
    prompt (the task rules: a label may open or close it, a rare word of the prompt counts as
    a word), complete (an unfinished one is cut after its last full sentence, or dropped) and,
    where the prompt asks for one of `labels`, on task (it names exactly one; right or wrong is
    not checked: the reference must answer the task, not be taught it)."""
    if rules.keyword(reply.text).refusal or rules.task_reply(reply.text, prompt):
        return None
    text = reply.text.strip()
    if not reply.ended:
        cut = max(text.rfind(c) for c in ".!?")
        text = text[: cut + 1] if cut >= 20 else ""
    if labels and sum(label in text.lower() for label in labels) != 1:
        return None
    return text or None


def benign_tuning_rows(original: str, prompts: list[tuple[str, tuple[str, ...], int]], cache: Path, rules,
                       tries: int) -> tuple[list[dict], bool]:
    """The original model's own answers to benign (prompt, labels, new-token budget) triples,
    by rejection sampling: a greedy reply first, then up to `tries - 1` sampled ones (T 0.8,
    top-p 0.95) for the prompts still without a usable answer. Every reply is cached (the
    generation is the slowest part of building the reference) and a rerun with more tries
    goes on from it. Returns the rows and whether anything was generated."""
    from stjax.generation import Reply

    replies = json.loads(cache.read_text()) if cache.is_file() else {}
    replies = {p: replies.get(p, []) for p, _, _ in prompts}
    answer: dict[str, str] = {}
    generated = False

    def judge_tries(upto: int) -> None:
        for p, labels, _ in prompts:
            for r in replies[p][:upto]:
                if p not in answer and (a := usable_answer(Reply(r["text"], r["ended"]), rules, labels, p)):
                    answer[p] = a

    for attempt in range(tries):
        judge_tries(attempt)
        sampling = {} if attempt == 0 else {"temperature": 0.8, "top_p": 0.95, "seed": attempt}
        for budget in sorted({b for _, _, b in prompts}):  # one generation per token budget
            todo = [p for p, _, b in prompts if b == budget and p not in answer and len(replies[p]) <= attempt]
            if todo:
                for p, r in zip(todo, chat_generate(original, todo, budget, 32, **sampling)):
                    replies[p].append({"text": r.text, "ended": r.ended})
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(replies))
                generated = True
    judge_tries(tries)
    return [{"input": p, "output": answer[p]} for p, _, _ in prompts if p in answer], generated


def seed_cache(cache: Path, source: Path) -> None:
    """Start a new recipe's reply cache from `source` (a recipe that differs only in the
    number of tries: its replies are the same greedy and seeded sampled rounds)."""
    if not cache.is_file() and source.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(source.read_bytes())
        tmp.replace(cache)


def reference_rules():
    import importlib.util

    from stjax.evaluation.reply_rules import WORDFREQ, CleanRefusalJudge, ReplyRules

    lexicon = [WORDFREQ] if importlib.util.find_spec("wordfreq") else []
    return CleanRefusalJudge(ReplyRules(labels=["positive", "negative"], lexicon=lexicon))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2")
    parser.add_argument("--safety-rows", type=int, default=400,
                        help="refusal rows for safety tuning (-1: every row of safe_direction.json not held out)")
    parser.add_argument("--benign-rows", type=int, default=900,
                        help="benign prompts the original answers for safety tuning (a quarter each AG News "
                             "topic and one sentence about a news item; half SST-2 unless --sst2-prompts says)")
    parser.add_argument("--sst2-prompts", type=int, default=1000,
                        help="SST-2 prompts among the benign ones (-1: half of --benign-rows, the v3 recipe)")
    parser.add_argument("--sst2-tokens", type=int, default=24,
                        help="new tokens per reply to an SST-2 tuning prompt (the v3 recipe: 48)")
    parser.add_argument("--tries", type=int, default=8,
                        help="replies per benign prompt until one is usable (greedy, then sampled; 4: the v4 "
                             "reference the study ran on, in the directory without the _t suffix)")
    parser.add_argument("--task-rows", type=int, default=1500, help="rows of the task file")
    parser.add_argument("--harmful-ratio", default="0.1", choices=["0", "0.05", "0.1"],
                        help="the task file: sst2_5k_p_{ratio}.json (0.1: 10%% harmful rows; 0: clean task data)")
    parser.add_argument("--eval-rows", type=int, default=100, help="held-out harmful, SST-2 and harmless prompts")
    parser.add_argument("--max-len", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4, help="LoRA fine-tuning learning rate")
    parser.add_argument("--seed", type=int, default=0,
                        help="fine-tuning seed (train.seed and data.mix_seed: LoRA init, data order, dropout, the "
                             "refusal-mix draw); "
                             "runs other than 0 go to rows{N}[_p{ratio}]_seed{S}/; the reference is shared")
    parser.add_argument("--settings", nargs="+", default=["sft", "pact"], choices=SETTINGS, metavar="SETTING",
                        help="fine-tuning settings to run, among: " + ", ".join(repr(s) for s in SETTINGS).replace("%", "%%"))
    parser.add_argument("--reference-only", action="store_true",
                        help="build and evaluate the aligned reference, then stop")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent")
        return 0
    from stjax.assets import fetch, smollm2_path
    from stjax.configlib import apply_overrides

    try:
        original = smollm2_path() or fetch("smollm2")[1]
    except Exception as e:  # no network: nothing to measure here
        print(f"skipped: SmolLM2 is not available ({e})")
        return 0
    original = str(original)
    timings = {}
    rng = random.Random(0)

    refusals = json.loads((SHARED / "safe_direction.json").read_text())
    rng.shuffle(refusals)
    held_out = [r["input"] for r in refusals[: args.eval_rows]]
    safety_rows = refusals[args.eval_rows:][: None if args.safety_rows < 0 else args.safety_rows]
    sst2_all = [r for r in json.loads((SHARED / "sst2_5k_p_0.json").read_text()) if "input" in r]
    sst2_eval = sst2_all[-args.eval_rows:]
    seen = {r["input"] for r in sst2_eval}  # the two files share sentences: keep evaluation rows out of training
    task = [r for r in json.loads((SHARED / f"sst2_5k_p_{args.harmful_ratio}.json").read_text())
            if r.get("input") not in seen][: args.task_rows]
    news = [r for r in json.loads((SHARED / "agnews_5k_p_0.json").read_text()) if "input" in r]
    eval_prompts = {"harmful": held_out, "sst2": [sst2_prompt(r) for r in sst2_eval],  # never trained on
                    "benign": benign_prompts(news[-args.eval_rows:])}
    quarter, v3_half = args.benign_rows // 4, args.benign_rows // 2
    half = v3_half if args.sst2_prompts < 0 else args.sst2_prompts
    if half > len(sst2_all) - args.eval_rows:
        raise SystemExit(f"--sst2-prompts: at most {len(sst2_all) - args.eval_rows} (the rest are held out)")
    labels = ("positive", "negative")  # an SST-2 answer must name a sentiment to be kept
    tuning = ([(sst2_prompt(r), labels, args.sst2_tokens) for r in sst2_all[:half]]
              + [(f"{r['instruction']} {r['input']}", (), 48) for r in news[:quarter]]
              + [(p, (), 48) for p in benign_prompts(news[quarter: args.benign_rows - v3_half])])
    # the aligned reference, its safety tokens and the runs on it live under one directory per recipe
    recipe = f"reference_s{len(safety_rows)}_b{args.benign_rows}"
    if (half, args.sst2_tokens) != (v3_half, 48):
        recipe += f"_sst{half}x{args.sst2_tokens}"
    root = Path(args.out).resolve()
    out = root / (recipe + (f"_t{args.tries}" if args.tries != 4 else ""))
    benign_cache = out / "data" / "benign_answers.json"
    if args.tries != 4:  # more (or fewer) tries go on from the replies the 4-try recipe generated
        sibling = root / recipe
        seed_cache(benign_cache, sibling / "data" / "benign_answers.json")
        seed_cache(out / "original_eval_raw.json", sibling / "original_eval_raw.json")  # the same prompts

    # 1. aligned reference: refusals + the original's own (non-refusing) answers to benign prompts
    # a stage's time is recorded by the run that did its work; a rerun from the caches keeps it
    report_file = out / "reference_report.json"
    built = json.loads(report_file.read_text())["timings"] if report_file.is_file() else {}
    start = time.perf_counter()
    aligned = out / "aligned"
    rules = reference_rules()
    benign, generated = benign_tuning_rows(original, tuning, benign_cache, rules, args.tries)
    if generated or "benign_answers_s" not in built:
        built["benign_answers_s"] = time.perf_counter() - start
    start = time.perf_counter()
    if not (aligned / "model").is_dir():  # a rerun (another --task-rows) reuses the aligned model
        safety_file = write_json(out / "data" / "safety_tune.json",
                                 [{"input": r["input"], "output": r["output"]} for r in safety_rows] + benign)
        train({"model": {"path": original, "dtype": "float32"},
               "data": {"train": [{"path": safety_file}], "max_len": args.max_len},
               "lora": {"enabled": False}, "optimizer": {"lr": 2e-5, "schedule": "warmup_cosine", "warmup_steps": 5},
               "train": {"run_dir": str(aligned), "epochs": 1, "batch_size": 16, "resume": "auto"},
               "checkpoint": {"every_steps": 25, "keep": 1}, "logging": {"tensorboard": False}})
        built["safety_tuning_s"] = time.perf_counter() - start
    start = time.perf_counter()
    evaluated = (aligned / "eval_raw.json").is_file()
    raw = {"aligned": cached_eval(aligned / "eval_raw.json", str(aligned / "model"), eval_prompts)}
    if not evaluated:
        built["aligned_eval_s"] = time.perf_counter() - start
    timings.update(built)
    original_raw = cached_eval(out / "original_eval_raw.json", original, eval_prompts)  # what alignment changed
    kept = {row["input"] for row in benign}
    reference = {"safety_rows": len(safety_rows), "benign_prompts": len(tuning), "benign_rows_kept": len(benign),
                 "sst2_rows_kept": sum(p in kept for p, _, _ in tuning[:half]), "tries": args.tries,
                 "tuning_samples": [r["output"][:120] for r in benign[:: max(1, len(benign) // 6)]],
                 **judge(raw["aligned"], held_out, sst2_eval, eval_prompts["benign"], rules)}
    before = judge(original_raw, held_out, sst2_eval, eval_prompts["benign"], rules)
    report_file.write_text(json.dumps({"reference": reference, "original": before, "timings": built}, indent=1))
    print(table({"original": before, "aligned": reference}))
    print(samples({"aligned": reference}))
    if args.reference_only:
        print(json.dumps(timings))
        return 0

    # 2. safety tokens: aligned vs original
    start = time.perf_counter()
    from stjax.pact import stage1

    refusal_file = write_json(out / "data" / "refusals.json", [{"input": r["input"], "output": r["output"]}
                                                                for r in safety_rows])
    needs_tokens = any(SETTINGS[name][0] != "sft" for name in args.settings)
    if needs_tokens and not (out / "safety_tokens" / "safety_tokens.safetensors").is_file():
        stage1.run(stage1.SafetyTokensConfig(
            aligned_model=str(aligned / "model"), base_model=original, refusals=refusal_file,
            out_dir=str(out / "safety_tokens"), num_samples=128, batch_size=16, dtype="float32"))
    timings["safety_tokens_s"] = time.perf_counter() - start

    # 3. poisoned fine-tuning, one run per setting (run directories per task size share the aligned model)
    task_file = write_json(out / "data" / f"sst2_p{args.harmful_ratio}_{args.task_rows}.json", task)
    setting_dir = f"rows{args.task_rows}" + ("" if args.harmful_ratio == "0.1" else f"_p{args.harmful_ratio}")
    runs = out / (setting_dir + (f"_seed{args.seed}" if args.seed else ""))
    for setting in args.settings:
        start = time.perf_counter()
        method, switches = SETTINGS[setting]
        loss = {"kind": method} if method == "sft" else {
            "kind": method, "safety_tokens": str(out / "safety_tokens"), "ref": "online" if method == "kl" else "cached"}
        run_dir = runs / slug(setting)
        train(apply_overrides({
            "model": {"path": str(aligned / "model"), "dtype": "float32"},
            "data": {"train": [{"path": task_file}], "max_len": args.max_len, "mix_seed": args.seed},
            "lora": {"enabled": True, "rank": 8, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
            "optimizer": {"lr": args.lr, "schedule": "step_decay", "decay_gamma": 0.85},
            "loss": loss,
            "train": {"run_dir": str(run_dir), "epochs": args.epochs, "batch_size": args.batch, "seed": args.seed,
                      "resume": "auto", "export": ["adapter", "merged"]},
            "checkpoint": {"every_steps": 50, "keep": 1}, "logging": {"tensorboard": False}},
            [s.replace("REFUSALS", refusal_file) for s in switches]))
        raw[setting] = cached_eval(run_dir / "eval_raw.json", str(run_dir / "merged"), eval_prompts)
        timings[f"{slug(setting)}_s"] = time.perf_counter() - start
    for setting in SETTINGS:  # the report covers every setting run so far at this task size
        if setting not in raw and (runs / slug(setting) / "eval_raw.json").is_file():
            raw[setting] = json.loads((runs / slug(setting) / "eval_raw.json").read_text())
    results = {name: judge(r, held_out, sst2_eval, eval_prompts["benign"], rules) for name, r in raw.items()}
    report = {"results": results, "raw": raw, "timings": timings, "settings": vars(args),
              "safety_tokens": safety_token_table(out / "safety_tokens", str(aligned / "model")) if needs_tokens else None}
    (runs / "report.json").write_text(json.dumps(report, indent=1))
    plot({"original": before, "aligned": reference, **results}, runs / "safety_vs_sst2.png", float(args.harmful_ratio))
    stats = report["safety_tokens"]
    print(table(results))
    print(samples(results))
    if stats:
        print(f"safety tokens: {stats['num_tokens']}, mean aligned p {stats['p_aligned_max']:.3g} (max) / "
              f"{stats['p_aligned_median']:.3g} (median) / {stats['p_aligned_min']:.3g} (min), "
              f"{stats['above_floor']} at >= 1% of the max, stop tokens in the set: {stats['stop_tokens_in_set']}")
    print(json.dumps(timings))
    names = {d: re.fullmatch(re.escape(setting_dir) + r"(?:_seed(\d+))?", d.name) for d in out.iterdir()}
    seeds = {int(m[1] or 0): d for d, m in names.items() if m and (d / "report.json").is_file()}
    if len(seeds) > 1:  # the spread over seeds of every setting (the shared aligned model left out), beside the runs
        reports = {seed: json.loads((seeds[seed] / "report.json").read_text())["results"] for seed in sorted(seeds)}
        summary = seed_table({seed: {k: v for k, v in r.items() if k != "aligned"} for seed, r in reports.items()})
        (out / f"{setting_dir}_seeds.md").write_text(summary + "\n")
        print(summary)
    return 0


def cached_eval(path: Path, model_path: str, prompts: dict[str, list[str]]) -> dict:
    """generate_eval's replies, read back from `path` when a run already made them; parts an
    older run did not generate (the harmless instructions), or generated for another number of
    prompts (--eval-rows), are generated again."""
    raw = json.loads(path.read_text()) if path.is_file() else {}
    missing = [part for part in prompts if len(raw.get(part, ())) != len(prompts[part])]
    if missing:
        raw.update(generate_eval(model_path, prompts, 16, missing))
        path.write_text(json.dumps(raw))
    return raw


if __name__ == "__main__":
    sys.exit(main())
