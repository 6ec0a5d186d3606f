"""One evaluation run: generate (cached) on every benchmark, judge, score, write the report.

The evaluated model is released before the Llama Guard judge is loaded, so two 8B models
never share the accelerators. Outputs: `report.json` (every item with its prompt, output
and verdicts; aggregates with counts and 95% Wilson intervals) and `summary.md`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

from stjax.data.records import DataError
from stjax.evaluation.benchmarks import Item, load_items
from stjax.evaluation.config import BenchmarkSection, EvalConfig, benchmark_kind
from stjax.evaluation.generation_cache import GenerationCache, cached_generate, directory_fingerprint, settings_key
from stjax.evaluation.keyword_judge import REFUSAL_MARKERS, KeywordJudge
from stjax.evaluation.reply_rules import CleanRefusalJudge, load_lexicon
from stjax.evaluation.run_info import run_label, training_run_info
from stjax.evaluation.scoring import score_safety, score_task
from stjax.evaluation.stats import rate
from stjax.evaluation.tables import REPORT_FILE, SUMMARY_FILE, summary_markdown
from stjax.generation import Reply
from stjax.hub import local_dir
from stjax.evaluation.utility import SCORERS



@dataclasses.dataclass
class Benchmark:
    name: str
    kind: str
    items: list[Item]
    max_new_tokens: int
    outputs: list[Reply] | None = None


def run_eval(config: EvalConfig) -> dict:
    """Runs the whole evaluation and returns the report it wrote to config.output_dir."""
    from stjax.models import make_mesh

    benchmarks = [load_benchmark(section, config.generation.max_new_tokens) for section in config.benchmarks]
    judge = reply_judge(config, benchmarks)  # reads its lexicon now, not after hours of generation
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    model_path = config.model.local_path()  # a Hub id's snapshot in the Hugging Face cache
    adapter_path = local_dir(config.adapter) if config.adapter else None
    keys, safety_mass = generate_all(config, benchmarks, model_path, adapter_path, mesh)

    guard = None
    if config.judges.llama_guard.path and any(b.kind == "safety" for b in benchmarks):
        from stjax.evaluation.llama_guard import LlamaGuardJudge

        g = config.judges.llama_guard
        guard = LlamaGuardJudge.from_pretrained(g.path, tokenizer=g.tokenizer, dtype=g.dtype, mesh=mesh,
                                                batch_size=g.batch_size, max_new_tokens=g.max_new_tokens)
    results = {b.name: judge_safety(b, judge, guard, config.progress) if b.kind == "safety" else score_utility(b, judge)
               for b in benchmarks}

    info = training_run_info(adapter_path or model_path)
    method = config.method or info.get("method")
    ratio = config.harmful_ratio if config.harmful_ratio is not None else info.get("harmful_ratio")
    report = {
        "run": {"label": run_label(config.name, method, ratio, config.model.path), "name": config.name,
                "method": method, "harmful_ratio": ratio},
        "headline": headline(results),
        "metadata": {"model": config.model.path, "adapter": config.adapter, "generation_keys": keys,
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "config": dataclasses.asdict(config)},
        "benchmarks": results,
    }
    if safety_mass is not None:
        report["safety_mass"] = safety_mass
    out = Path(config.output_dir)
    write_atomically(out / REPORT_FILE, json.dumps(report, indent=1))
    write_atomically(out / SUMMARY_FILE, summary_markdown(report))
    return report


def load_benchmark(section: BenchmarkSection, default_max_new_tokens: int) -> Benchmark:
    """A benchmark's items, checked before any model is loaded."""
    kind = benchmark_kind(section)
    items = load_items(section.name, section.path, section.limit)
    if not items:
        raise DataError(f"benchmark {section.name}: no items")
    if kind != "safety":
        unlabelled = next((item.id for item in items if item.reference is None), None)
        if unlabelled is not None:
            raise DataError(f"benchmark {section.name}: item {unlabelled} has no reference answer to score against")
    return Benchmark(section.name, kind, items, section.max_new_tokens or default_max_new_tokens)


def load_adapted_model(config: EvalConfig, model_path: str, adapter_path: str | None, mesh):
    """(model with its adapter attached, tokenizer)."""
    from stjax.evaluation.adapter import load_peft_adapter
    from stjax.models.sections import load_model
    from stjax.models.sections import load_tokenizer, mesh_rules

    tokenizer = load_tokenizer(config.model.tokenizer_path(), config.model.chat_template)
    model = load_model(config.model, mesh, rules=mesh_rules(config.mesh), path=model_path)
    if adapter_path:
        load_peft_adapter(model, adapter_path)
    return model, tokenizer


def generation_settings(config: EvalConfig, model_path: str, adapter_path: str | None, tokenizer) -> dict:
    """Everything besides max_new_tokens that determines an output: the cache key's content."""
    from stjax.pact.safety_tokens import tokenizer_fingerprint

    gen = config.generation
    return {"model": directory_fingerprint(model_path),
            "adapter": directory_fingerprint(adapter_path) if adapter_path else None,
            "tokenizer": tokenizer_fingerprint(tokenizer), "chat_template": tokenizer.chat_template,
            "dtype": config.model.dtype, "compute_dtype": config.model.compute_dtype,
            "system_prompt": gen.system_prompt, "temperature": gen.temperature, "top_p": gen.top_p, "seed": gen.seed}


def generate_all(config: EvalConfig, benchmarks: list[Benchmark], model_path: str, adapter_path: str | None,
                 mesh) -> tuple[dict[str, str], dict | None]:
    """Fills every benchmark's outputs (from the cache where it can) and measures the
    safety-token mass; returns (cache key per benchmark, safety-mass curve or None).
    The model lives only inside this call."""
    from stjax.generation import generate_chat

    model, tokenizer = load_adapted_model(config, model_path, adapter_path, mesh)
    gen = config.generation
    settings = generation_settings(config, model_path, adapter_path, tokenizer)
    cache_dir = Path(gen.cache_dir or Path(config.output_dir) / "generations")
    keys = {}
    for bench in benchmarks:
        keys[bench.name] = settings_key({**settings, "max_new_tokens": bench.max_new_tokens})

        def generate_batch(prompts: list[str], max_new_tokens: int = bench.max_new_tokens) -> list[Reply]:
            return generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                                 system_prompt=gen.system_prompt, max_new_tokens=max_new_tokens,
                                 temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed, mesh=mesh)

        cache = GenerationCache(cache_dir / f"{bench.name}.jsonl", keys[bench.name])
        bench.outputs = cached_generate(bench.items, cache, generate_batch, batch_size=gen.batch_size,
                                        progress=config.progress, desc=bench.name)
    mass = None
    if config.safety_mass.tokens is not None:
        mass = measure_safety_mass(config, benchmarks, model, tokenizer, mesh)
    return keys, mass


def measure_safety_mass(config: EvalConfig, benchmarks: list[Benchmark], model, tokenizer, mesh) -> dict:
    """The safety-token mass curve of the model's own greedy responses to harmful prompts."""
    from stjax.evaluation.safety_mass import mass_curve, safety_mass_by_position
    from stjax.pact.safety_tokens import load_safety_tokens

    cfg = config.safety_mass
    source = next(b for b in benchmarks if b.name == cfg.benchmark or (cfg.benchmark is None and b.kind == "safety"))
    prompts = [item.prompt for item in source.items[: cfg.limit]]
    ids, _ = load_safety_tokens(cfg.tokens, vocab_size=model.config.vocab_size, tokenizer=tokenizer)
    values = safety_mass_by_position(model, tokenizer, prompts, None, ids, cfg.positions,
                                     system_prompt=config.generation.system_prompt,
                                     batch_size=config.generation.batch_size, vocab_chunk=cfg.vocab_chunk, mesh=mesh)
    return {"benchmark": source.name, "tokens": cfg.tokens, "num_safety_tokens": len(ids),
            "num_prompts": len(prompts), "positions": cfg.positions, **mass_curve(values)}


def reply_judge(config: EvalConfig, benchmarks: list[Benchmark]) -> CleanRefusalJudge:
    """The clean-refusal judge of `judges.clean`, with the keyword judge's markers; task
    labels default to the reference answers of the label benchmarks (SST-2, AG News)."""
    markers = config.judges.keyword.markers
    keyword = KeywordJudge([*(REFUSAL_MARKERS if markers is None else markers), *config.judges.keyword.extra_markers])
    rules = config.judges.clean
    if rules.labels is None:
        labels = sorted({item.reference for b in benchmarks if b.kind in ("sst2", "ag_news") for item in b.items})
        rules = dataclasses.replace(rules, labels=labels)
    load_lexicon(tuple(rules.lexicon))
    return CleanRefusalJudge(rules, keyword=keyword if rules.refusal_markers is None else None)


def judge_safety(bench: Benchmark, judge: CleanRefusalJudge, guard, progress: bool) -> dict:
    result = score_safety([item.prompt for item in bench.items], bench.outputs, judge)
    for item, record in zip(bench.items, result["items"]):
        record["id"] = item.id
    n = len(result["items"])
    if guard is not None:
        verdicts = guard([i.prompt for i in bench.items], [o.text for o in bench.outputs], progress=progress)
        for record, v in zip(result["items"], verdicts):
            record["llama_guard"] = {"unsafe": v.unsafe, "categories": list(v.categories), "p_unsafe": v.p_unsafe,
                                     "text": v.text}
        result["aggregates"]["llama_guard_harmful"] = rate(sum(v.unsafe for v in verdicts), n)
        result["aggregates"]["llama_guard_mean_p_unsafe"] = sum(v.p_unsafe for v in verdicts) / n if n else None
    return result


def score_utility(bench: Benchmark, judge: CleanRefusalJudge) -> dict:
    result = score_task(bench.kind, [item.prompt for item in bench.items], bench.outputs,
                        [item.reference for item in bench.items], SCORERS[bench.kind], judge)
    for item, record in zip(bench.items, result["items"]):
        record["id"] = item.id
    return result


def headline(results: dict) -> dict:
    """The two numbers a comparison plots: the first safety benchmark's harmful score
    (Llama Guard where it ran, else the share of replies that are not clean refusals) and
    the first utility benchmark's accuracy."""
    out = {}
    for name, result in results.items():
        aggregates = result["aggregates"]
        if result["kind"] == "safety" and "harmful_score" not in out:
            metric = "llama_guard_harmful" if "llama_guard_harmful" in aggregates else "clean_asr"
            out["harmful_score"] = {"benchmark": name, "metric": metric, **aggregates[metric]}
        elif result["kind"] != "safety" and "task_accuracy" not in out:
            out["task_accuracy"] = {"benchmark": name, "metric": "accuracy", **aggregates["accuracy"]}
    return out


def write_atomically(path: Path, text: str) -> None:
    """A report is complete or absent, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
