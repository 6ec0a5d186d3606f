"""The evaluation config schema (`stjax eval --config configs/eval_X.yaml`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from stjax.configlib import ConfigKeyError, apply_overrides, from_dict, read_yaml
from stjax.evaluation.benchmarks import KNOWN, Kind
from stjax.evaluation.reply_rules import ReplyRules
from stjax.models.sections import MeshSection, ModelSection


@dataclasses.dataclass
class BenchmarkSection:
    name: str  # a known benchmark (advbench, sst2, ...) or any label for a local file
    kind: Kind | None = None  # required for a name that is not a known benchmark
    path: str | None = None  # local JSON/JSONL/CSV (or toy://); default: the known Hub/TFDS source
    limit: int | None = None  # first N items (default: the known benchmark's, e.g. AG News 1000)
    max_new_tokens: int | None = None  # default: generation.max_new_tokens


@dataclasses.dataclass
class GenerationSection:
    max_new_tokens: int = 256
    batch_size: int = 16
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str | None = None
    cache_dir: str | None = None  # default: <output_dir>/generations


@dataclasses.dataclass
class KeywordSection:
    markers: list[str] | None = None  # replaces the default list (GCG's plus eight)
    extra_markers: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LlamaGuardSection:
    path: str | None = None  # a Llama-Guard-3 checkpoint directory; null: judge off
    tokenizer: str | None = None  # default: the checkpoint directory
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    batch_size: int = 8
    max_new_tokens: int = 10


@dataclasses.dataclass
class JudgesSection:
    keyword: KeywordSection = dataclasses.field(default_factory=KeywordSection)
    clean: ReplyRules = dataclasses.field(default_factory=ReplyRules)  # the clean-refusal / degenerate rules
    llama_guard: LlamaGuardSection = dataclasses.field(default_factory=LlamaGuardSection)


@dataclasses.dataclass
class SafetyMassSection:
    tokens: str | None = None  # output directory of stjax safety-tokens; null: skip
    positions: int = 32  # first response positions measured
    benchmark: str | None = None  # whose prompts; default: the first safety benchmark
    limit: int | None = None  # first N of its prompts
    vocab_chunk: int = 8192  # columns of the output projection per step of the normalizer


@dataclasses.dataclass
class EvalConfig:
    model: ModelSection
    benchmarks: list[BenchmarkSection]
    output_dir: str
    adapter: str | None = None  # a PEFT LoRA adapter directory (stjax's export or PEFT's)
    name: str | None = None  # label in reports; default: from method and harmful_ratio
    method: str | None = None  # default: loss.kind of the training run that made model/adapter
    harmful_ratio: float | None = None  # default: data.harmful_ratio of that training run
    generation: GenerationSection = dataclasses.field(default_factory=GenerationSection)
    judges: JudgesSection = dataclasses.field(default_factory=JudgesSection)
    safety_mass: SafetyMassSection = dataclasses.field(default_factory=SafetyMassSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    progress: bool = True


def benchmark_kind(section: BenchmarkSection) -> Kind:
    return section.kind or KNOWN[section.name].kind


def validate(config: EvalConfig) -> EvalConfig:
    """Cross-field checks the types cannot express, before any model is loaded."""
    if not config.benchmarks:
        raise ConfigKeyError("'benchmarks': give at least one benchmark")
    names = [b.name for b in config.benchmarks]
    for i, bench in enumerate(config.benchmarks):
        where = f"'benchmarks[{i}]'"
        if not re.fullmatch(r"[\w.-]+", bench.name):  # it names the benchmark's cache file
            raise ConfigKeyError(f"{where}: name {bench.name!r} may hold only letters, digits, '_', '.', '-'")
        if names.count(bench.name) > 1:
            raise ConfigKeyError(f"{where}: benchmark name '{bench.name}' is used twice")
        if bench.name not in KNOWN and (bench.kind is None or bench.path is None):
            raise ConfigKeyError(f"{where}: '{bench.name}' is not a known benchmark ({', '.join(KNOWN)}); "
                                 "give its 'kind' and a local 'path'")
        if bench.name in KNOWN and bench.kind not in (None, KNOWN[bench.name].kind):
            raise ConfigKeyError(f"{where}: '{bench.name}' is a {KNOWN[bench.name].kind} benchmark, "
                                 f"not {bench.kind}")
    if config.judges.keyword.markers == []:
        raise ConfigKeyError("'judges.keyword.markers': give at least one marker, or null for the default list")
    clean = config.judges.clean
    if clean.max_ngram < 1:
        raise ConfigKeyError(f"'judges.clean.max_ngram': expected >= 1, got {clean.max_ngram}")
    if clean.refusal_markers == []:
        raise ConfigKeyError("'judges.clean.refusal_markers': give at least one marker, or null for the keyword list")
    gen = config.generation
    if gen.batch_size < 1 or gen.max_new_tokens < 1:
        raise ConfigKeyError("'generation.batch_size' and 'generation.max_new_tokens' must be >= 1")
    if gen.temperature < 0 or not 0 < gen.top_p <= 1:
        raise ConfigKeyError("'generation': expected temperature >= 0 and 0 < top_p <= 1")
    mass = config.safety_mass
    if mass.positions < 1 or mass.vocab_chunk < 1:
        raise ConfigKeyError("'safety_mass.positions' and 'safety_mass.vocab_chunk' must be >= 1")
    if mass.tokens is not None:
        safety = [b.name for b in config.benchmarks if benchmark_kind(b) == "safety"]
        if mass.benchmark is None and not safety:
            raise ConfigKeyError("'safety_mass.tokens' needs a safety benchmark to take prompts from")
        if mass.benchmark is not None and mass.benchmark not in safety:
            raise ConfigKeyError(f"'safety_mass.benchmark': '{mass.benchmark}' is not one of the safety "
                                 f"benchmarks {safety}")
    return config


def load_eval_config(path: str | Path, overrides: list[str] = ()) -> EvalConfig:
    return validate(from_dict(EvalConfig, apply_overrides(read_yaml(path), list(overrides))))
