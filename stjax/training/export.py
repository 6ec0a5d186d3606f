"""What a run hands over, and exporting any checkpoint it saved.

Every export (a PEFT adapter in adapter/, LoRA merged into the base in merged/, a fully
fine-tuned model in model/) carries the tokenizer (with the chat template the run used),
the base model's generation_config.json (its sampling defaults and stop ids) and a model
card (README.md: base model, method and settings, safety tokens, data, final metrics), so
it loads in transformers, PEFT or vLLM and can be pushed to the Hub as it is.

`export_checkpoint` (`stjax export RUN_DIR --step N`) rebuilds the run's model from the
config.yaml the run wrote, restores a saved step and exports it like the end of a run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from flax import nnx

from stjax.lora import expand_targets, merge_lora, save_peft_adapter
from stjax.models import save_pretrained
from stjax.training.config import TrainConfig
from stjax.training.metrics_log import read_metrics

GENERATION_CONFIG = "generation_config.json"
CARD = "README.md"


def _source_line(source) -> str:
    where = source.path or (f"tfds {source.tfds}:{source.split}" if source.tfds else f"hf {source.hf}:{source.split}")
    return where + (f" (first {source.limit})" if source.limit else "")


def model_card(config: TrainConfig, kind: str, metrics: dict | None = None, step: int | None = None) -> str:
    """README.md of an export: Hub front matter, then what was trained on what, and how."""
    loss, lora, data = config.loss, config.lora, config.data
    tags = ["stjax", loss.kind] + (["lora"] if lora.enabled else [])
    front = ["---", f"base_model: {config.model.path}", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
             "tags:", *[f"- {t}" for t in tags], "---", ""]
    rows = [("base model", config.model.path + (f" @ {config.model.revision}" if config.model.revision else "")),
            ("method", loss.kind), ("export", kind)]
    if loss.kind != "sft":
        rows += [("lambda", loss.lam), ("reference", loss.ref)]
    if loss.kind in ("pact", "pact_bucket"):
        rows += [("safety tokens", loss.safety_tokens), ("temperature", loss.temperature),
                 ("KL at the end-of-turn position", loss.kl_at_end),
                 ("KL on the first N response positions", loss.kl_first_positions or "all")]
    rows += [("fine-tuning", f"LoRA r {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}, on "
                             f"{', '.join(expand_targets(lora.targets))}{', rsLoRA' if lora.rslora else ''}"
              if lora.enabled else "full"),
             ("optimizer", f"AdamW lr {config.optimizer.lr}, {config.optimizer.schedule}, weight decay "
                           f"{config.optimizer.weight_decay}"),
             ("epochs / batch / max length", f"{config.train.epochs} / {config.train.batch_size} / {data.max_len}"),
             ("data", "; ".join(_source_line(s) for s in data.train))]
    if data.harmful is not None and data.harmful_ratio > 0:
        rows.append(("harmful rows mixed in", f"{data.harmful_ratio:.0%} from {_source_line(data.harmful)}"))
    if data.safety is not None and data.safety_ratio > 0:
        rows.append(("refusal rows mixed in", f"{data.safety_ratio:.0%} from {_source_line(data.safety)}"))
    if step is not None:
        rows.append(("checkpoint step", step))
    if metrics:
        rows += [(f"final {k}", f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items()
                 if k in ("step", "loss", "ce", "kl", "gate")]
    table = ["| setting | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows]]
    if kind == "adapter":
        use = ["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
               "model = AutoPeftModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)",
               "```"]
    else:
        use = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
               "model = AutoModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)",
               "```"]
    title = f"# {Path(config.train.run_dir).name}: {loss.kind} fine-tune of {config.model.path}"
    return "\n".join(front + [title, "", "Trained with stjax.", "", *table, "", "## Use", "", *use, ""])


def _extras(config: TrainConfig, kind: str, metrics: dict | None, step: int | None) -> dict[str, str]:
    extras = {CARD: model_card(config, kind, metrics, step)}
    generation = Path(config.model.local_path()) / GENERATION_CONFIG
    if generation.is_file():
        extras[GENERATION_CONFIG] = generation.read_text()
    return extras


def exporter(config: TrainConfig, tokenizer, out_dir: str | Path | None = None,
             metrics: Callable[[], dict | None] = lambda: None, step: int | None = None
             ) -> Callable[[nnx.Module], Path | None]:
    """trained model -> the exports of train.export under `out_dir` (default: the run
    directory); returns the last one written."""
    base, lora = Path(out_dir or config.train.run_dir), config.lora

    def export(model: nnx.Module) -> Path | None:
        out = None
        for kind in config.train.exports(lora.enabled):
            extras = _extras(config, kind, metrics(), step)
            if kind == "adapter":
                out = save_peft_adapter(model, base / "adapter", base_model=config.model.path, rank=lora.rank,
                                        alpha=lora.alpha, dropout=lora.dropout, tokenizer=tokenizer, extra_files=extras)
            elif kind == "merged":
                copy = nnx.merge(*nnx.split(model))  # merge_lora works in place: a later adapter export needs them
                out = save_pretrained(merge_lora(copy), base / "merged", tokenizer=tokenizer, extra_files=extras)
            else:
                out = save_pretrained(model, base / "model", tokenizer=tokenizer, extra_files=extras)
        return out

    return export


def logged_metrics(run_dir: str | Path) -> list[dict]:
    """The run's metrics.jsonl lines (none before its first logged step)."""
    return read_metrics(run_dir) if (Path(run_dir) / "metrics.jsonl").is_file() else []


def export_checkpoint(run_dir: str | Path, *, step: int | None = None, out_dir: str | Path | None = None,
                      kinds: list[str] | None = None) -> Path | None:
    """Exports checkpoint `step` (default: the newest) of a run, as the run would have at its end,
    into `out_dir` (default: RUN_DIR/export-step-N)."""
    from stjax.errors import UserError
    from stjax.models import make_mesh
    from stjax.models.sections import load_tokenizer, mesh_rules
    from stjax.training.build import trainable_parts  # build imports this module: imported here
    from stjax.training.checkpointing import Checkpointer
    from stjax.training.config import load_train_config
    from stjax.training.objectives import sft
    from stjax.training.optimizer import make_optimizer, make_schedule
    from stjax.training.program import build_program

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: no config.yaml (expected the run directory of stjax train)")
    config = load_train_config(run_dir / "config.yaml")
    if kinds:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, export=list(kinds)))
    checkpointer = Checkpointer(config.checkpoint_dir, keep=config.checkpoint.keep, async_save=False)
    steps = sorted(checkpointer.manager.all_steps())
    if not steps or (step is not None and step not in steps):
        checkpointer.close()
        raise UserError(f"{config.checkpoint_dir}: no checkpoint {'at step ' + str(step) if step is not None else ''}"
                        f" (saved steps: {', '.join(map(str, steps)) or 'none'})")
    step = steps[-1] if step is None else step
    mesh, rules = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor), mesh_rules(config.mesh)
    tokenizer = load_tokenizer(config.model.tokenizer_path(), config.model.chat_template)
    graphdef, params, rest = trainable_parts(config, mesh, rules)
    # the optimizer only gives the restore target its state's structure: any schedule will do
    tx = make_optimizer(config.optimizer, make_schedule(config.optimizer, max(step, 1) * 2, max(step, 1)))
    program = build_program(graphdef, params, rest, sft(), tx, mesh, lora=config.lora.enabled, rules=rules)
    state, _ = checkpointer.restore(step, program.init_state(params), program.state_shardings)
    checkpointer.close()
    trained = nnx.merge(graphdef, state.params, rest)
    trained.eval()
    out = Path(out_dir) if out_dir else run_dir / f"export-step-{step}"
    step_metrics = next((m for m in reversed(logged_metrics(run_dir)) if m.get("step") == step), None)
    return exporter(config, tokenizer, out, metrics=lambda: step_metrics, step=step)(trained)
