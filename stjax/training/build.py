"""A TrainConfig -> the parts of a Trainer: tokenizer and data, model split for training,
objective, optimizer, train program and state, checkpointer, exporter.

The one function that loads things for a run; the Trainer itself only loops over what it
is given. With `ref: cached` the reference pass over the training set runs here, before
the state is initialized (the initial trainable weights are the reference's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import yaml
from flax import nnx

from stjax.data.pipeline import build_eval_data, build_training_data
from stjax.lora import LoraParam, apply_lora
from stjax.errors import UserError
from stjax.models import make_mesh
from stjax.models.config import ModelConfig
from stjax.models.sections import load_model, load_tokenizer, mesh_rules
from stjax.objective import Objective
from stjax.pact.safety_tokens import load_safety_tokens
from stjax.training.checkpointing import Checkpointer, CheckpointMismatch, check_resumable
from stjax.training.config import TrainConfig
from stjax.training.export import exporter, logged_metrics
from stjax.training.objectives import build_objective
from stjax.training.optimizer import make_optimizer, make_schedule
from stjax.training.program import build_program
from stjax.training.run_lock import RunLock
from stjax.training.reference_cache import CachedBatches, cached_reference, precompute_reference
from stjax.training.step import split_model
from stjax.training.trainer import LoopSettings, Trainer
from stjax.training.validation import make_evaluator
from stjax.logs import get_logger

log = get_logger(__name__)


def objective_for(config: TrainConfig, vocab_size: int, tokenizer, header_len: int) -> Objective:
    """The loss section's objective; PACT's reads its safety tokens from loss.safety_tokens."""
    loss = config.loss
    ids = weights = None
    if loss.kind in ("pact", "pact_bucket"):
        ids, weights = load_safety_tokens(loss.safety_tokens, vocab_size=vocab_size, tokenizer=tokenizer)
    return build_objective(loss, safety_ids=ids, safety_weights=weights, header_len=header_len)


def trainable_parts(config: TrainConfig, mesh, rules) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The model a config trains, its adapters attached, split into (graph, trained
    variables, frozen rest): the trainer's, and `stjax export`'s restore target."""
    model = load_model(config.model, mesh, rules=rules)
    lora = config.lora
    if lora.enabled:
        apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets,
                   seed=config.train.seed, rslora=lora.rslora)
    return split_model(model, LoraParam if lora.enabled else nnx.Param)


def check_vocabulary(config: TrainConfig, data) -> int:
    """Token ids beyond the model's embedding table would read garbage (NaN at step 1): one
    line naming both instead, from config.json alone. Returns the vocabulary size."""
    vocab = ModelConfig.from_pretrained(config.model.local_path()).vocab_size
    highest = max(int(e.tokens.max()) for e in data.examples)
    if highest >= vocab:
        raise UserError(f"{config.model.tokenizer or config.model.path}: the tokenizer produced token id {highest}, "
                        f"but the model {config.model.path} has vocab_size {vocab}: the tokenizer does not belong "
                        "to this model (model.tokenizer)")
    return vocab


def build_trainer(config: TrainConfig, *, tokenizer=None) -> Trainer:
    """The trainer of a config, holding the run directory's lock (released when its run ends).
    Everything that can be checked is checked before the lock, so bad input writes nothing."""
    lock = RunLock(config.train.run_dir)
    try:
        return _build(config, tokenizer, lock)
    except BaseException:
        lock.release()
        raise


def _build(config: TrainConfig, tokenizer, lock: RunLock) -> Trainer:
    run_dir = Path(config.train.run_dir)
    mesh, rules = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor), mesh_rules(config.mesh)
    tokenizer = tokenizer or load_tokenizer(config.model.tokenizer_path(), config.model.chat_template)
    data = build_training_data(config, tokenizer)
    log.info(f"data: {data.stats}")
    steps_per_epoch = data.batches.batches_per_epoch
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)

    vocab_size = check_vocabulary(config, data)  # before any weight is read
    objective = objective_for(config, vocab_size, tokenizer, len(data.header_ids))
    graphdef, params, rest = trainable_parts(config, mesh, rules)
    schedule = make_schedule(config.optimizer, total_steps, steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    program = build_program(graphdef, params, rest, objective, tx, mesh, lora=config.lora.enabled, ref=config.loss.ref,
                            grad_accum=config.train.grad_accum, seed=config.train.seed, rules=rules)
    lock.acquire()  # before the first write into the run directory (checkpoints/, reference_cache/)
    # only the lock holder cleans up half-written steps, and only in its own run directory
    owned = lock.held and "://" not in config.checkpoint_dir and Path(config.checkpoint_dir).resolve().is_relative_to(
        run_dir.resolve())
    checkpointer = Checkpointer(config.checkpoint_dir, keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save, config=dataclasses.asdict(config), owner=owned)
    latest = checkpointer.latest_step() if config.train.resume == "auto" else None
    if latest is not None:  # before config.yaml is rewritten: the checkpoints must be this config's
        try:
            check_resumable(run_dir, dataclasses.asdict(config), latest, checkpointer.recorded_config(latest))
        except CheckpointMismatch:
            checkpointer.close()
            raise
    batches = data.batches
    finished = latest is not None and latest >= total_steps  # no step will run: no reference, no evaluation
    if objective.needs_reference and not program.online:
        if finished:
            log.info(f"reference cache: not needed (the run finished at step {latest})")
        else:
            batches = CachedBatches(batches, cached_reference(config, objective, program, params, data.examples))
    evaluate = None
    eval_data = None if finished else build_eval_data(config, tokenizer)
    if eval_data is not None:
        log.info(f"eval data: {eval_data.stats}")
        eval_cache = None
        if objective.needs_reference and not program.online:  # small: computed each start, not saved
            eval_cache = precompute_reference(
                objective.reference_fn, program.graphdef, params, program.frozen, eval_data.examples,
                batch_size=config.train.batch_size, max_len=config.data.max_len, buckets=config.data.buckets,
                put_batch=program.device_batch, progress=config.logging.progress,
                loss_index=config.data.gather_loss_positions)
        evaluate = make_evaluator(program, eval_data, eval_cache)
    state = program.init_state(params)  # donates params: the reference caches are computed before

    def write_config() -> None:
        if jax.process_index() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    settings = LoopSettings(total_steps, log_every=config.train.log_every,
                            checkpoint_every=config.checkpoint.every_steps, resume=config.train.resume == "auto",
                            progress=config.logging.progress, tensorboard=config.logging.tensorboard,
                            steps_per_epoch=steps_per_epoch, hparams=dataclasses.asdict(config),
                            wandb=config.logging.wandb, eval_every=config.train.eval_every)
    return Trainer(program, state, batches, checkpointer, run_dir, schedule, settings,
                   export=exporter(config, tokenizer, metrics=lambda: (logged_metrics(run_dir) or [None])[-1]),
                   on_start=write_config, evaluate=evaluate, on_end=lock.release)
