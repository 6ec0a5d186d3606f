"""The training loop behind `python -m stjax.train`: config -> checkpoints, metrics, exports."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import yaml
from flax import nnx

from stjax.data.pipeline import build_training_data, load_tokenizer
from stjax.lora import LoraParam, apply_lora, merge_lora, save_peft_adapter
from stjax.models import from_pretrained, make_mesh, save_pretrained
from stjax.pact.safety_tokens import load_safety_tokens
from stjax.toy.build import resolve
from stjax.training.checkpointing import Checkpointer
from stjax.training.config import TrainConfig
from stjax.training.metrics_log import MetricsLog
from stjax.training.objectives import Objective, build_objective
from stjax.training.optimizer import make_optimizer, make_schedule
from stjax.distributed import StopAgreement
from stjax.training.preemption import StopRequest
from stjax.training.reference_cache import CachedBatches, precompute_reference
from stjax.training.step import (
    Frozen, TrainState, batch_sharding, jit_train_step, make_train_step, split_model, state_sharding,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    final_step: int
    stopped_by: str | None  # signal name when preempted
    losses: list[float]
    export_dir: Path | None


def _host_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class Trainer:
    """Builds everything a run needs from a TrainConfig; `run()` trains to the end or to a stop."""

    def __init__(self, config: TrainConfig, *, tokenizer=None):
        self.config = config
        self.run_dir = Path(config.train.run_dir)
        self.mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        self.batch_sharding = batch_sharding(self.mesh)
        self.model_path = resolve(config.model.path)
        self.tokenizer = tokenizer or load_tokenizer(config.model.tokenizer or config.model.path)
        self.data = build_training_data(config, self.tokenizer)
        print(f"data: {self.data.stats}")
        steps_per_epoch = self.data.batches.batches_per_epoch
        self.total_steps = config.train.epochs * steps_per_epoch
        if config.train.max_steps is not None:
            self.total_steps = min(self.total_steps, config.train.max_steps)

        model = from_pretrained(
            self.model_path, dtype=jnp.dtype(config.model.dtype),
            compute_dtype=jnp.dtype(config.model.compute_dtype or config.model.dtype),
            mesh=self.mesh, remat=config.model.remat, attention=config.model.attention,
        )
        objective = self.build_objective(model.config.vocab_size)
        lora = config.lora
        if lora.enabled:
            apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets,
                       seed=config.train.seed)
        self.graphdef, params, rest = split_model(model, LoraParam if lora.enabled else nnx.Param)
        online = objective.needs_reference and config.loss.ref == "online"
        # Full fine-tuning with an online reference keeps a frozen copy of the initial weights;
        # with LoRA the reference is the base itself with the adapters turned off.
        self.frozen = Frozen(rest, jax.tree.map(jnp.copy, params) if online and not lora.enabled else None)
        if objective.needs_reference and not online:
            cache = precompute_reference(
                objective.reference_fn, self.graphdef, params, self.frozen, self.data.examples,
                batch_size=config.train.batch_size, max_len=config.data.max_len, buckets=config.data.buckets,
                put_batch=self.device_batch, progress=config.logging.progress)
            self.data.batches = CachedBatches(self.data.batches, cache)

        self.schedule = make_schedule(config.optimizer, self.total_steps, steps_per_epoch)
        tx = make_optimizer(config.optimizer, self.schedule)
        rng = jax.random.key_data(jax.random.key(config.train.seed))

        def init(params):
            return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), rng)

        self.state_shardings = state_sharding(jax.eval_shape(init, params), self.mesh)
        self.state = jax.jit(init, out_shardings=self.state_shardings, donate_argnums=0)(params)
        self.step_fn = jit_train_step(
            make_train_step(self.graphdef, objective.loss, tx, grad_accum=config.train.grad_accum,
                            reference_fn=objective.reference_fn if online else None),
            self.state_shardings, jax.tree.map(lambda x: x.sharding, self.frozen), self.batch_sharding,
        )
        self.checkpointer = Checkpointer(config.checkpoint_dir, keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save)

    def build_objective(self, vocab_size: int) -> Objective:
        loss = self.config.loss
        ids = weights = None
        if loss.kind in ("pact", "pact_bucket"):
            ids, weights = load_safety_tokens(resolve(loss.safety_tokens), vocab_size=vocab_size,
                                              tokenizer=self.tokenizer)
        return build_objective(loss, safety_ids=ids, safety_weights=weights,
                               header_len=len(self.data.header_ids))

    # -------------------------------------------------------------------- running
    def write_resolved_config(self) -> None:
        if jax.process_index() == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(self.config), sort_keys=False))

    def maybe_resume(self) -> int:
        latest = self.checkpointer.latest_step()
        if self.config.train.resume == "never" or latest is None:
            return 0
        self.state, data_state = self.checkpointer.restore(latest, self.state, self.state_shardings)
        self.data.batches.set_state(data_state)
        return latest

    def device_batch(self, batch: dict) -> dict:
        """Host rows -> global arrays sharded over the batch mesh axes."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()}

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        self.write_resolved_config()
        start = self.maybe_resume()
        log = MetricsLog(self.run_dir, tensorboard=self.config.logging.tensorboard)
        every = self.config.checkpoint.every_steps
        bar = tqdm(total=self.total_steps, initial=start, unit="step", dynamic_ncols=True,
                   disable=not self.config.logging.progress or jax.process_index() != 0)
        losses: list[float] = []
        pending = None  # (step, metrics) of the step in flight
        last_settled = time.perf_counter()
        last_saved = start if start else None
        stopped_by = None
        step = start
        batches = iter(self.data.batches)

        def settle(entry):
            nonlocal last_settled
            done_step, metrics = entry
            values = _host_metrics(metrics)
            if not math.isfinite(values["loss"]):
                where = f"step {last_saved} in {self.checkpointer.directory}" if last_saved else "none yet"
                raise TrainingDiverged(f"step {done_step}: loss is {values['loss']}; stopped. "
                                       f"Last good checkpoint: {where}")
            now = time.perf_counter()
            elapsed, last_settled = max(now - last_settled, 1e-9), now
            values.update(step=done_step, lr=float(self.schedule(done_step - 1)),
                          tokens_per_sec=values["tokens"] / elapsed)
            losses.append(values["loss"])
            if done_step % self.config.train.log_every == 0 or done_step == self.total_steps:
                log.write(values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_sec']:.0f}")
            bar.update(1)

        try:
            with StopRequest() as stop:
                agreement = StopAgreement()  # every process stops at the same step
                while step < self.total_steps:
                    batch = self.device_batch(next(batches))
                    self.state, metrics = self.step_fn(self.state, self.frozen, batch)
                    step += 1
                    if pending is not None:  # read the previous step while this one runs
                        settle(pending)
                    pending = (step, metrics)
                    stopped_by = agreement.poll(stop.signal_name)
                    if step % every == 0 or step == self.total_steps or stopped_by:
                        settle(pending)
                        pending = None
                        self.checkpointer.save(step, self.state, self.data.batches.get_state())
                        last_saved = step
                    if stopped_by:
                        break
                if pending is not None:
                    settle(pending)
        finally:
            bar.close()
            log.close()
            self.checkpointer.close()
        export_dir = None if stopped_by else self.export()
        return TrainResult(step, stopped_by, losses, export_dir)

    # -------------------------------------------------------------------- exports
    def trained_model(self):
        return nnx.merge(self.graphdef, self.state.params, self.frozen.rest)

    def export(self) -> Path | None:
        """LoRA: a PEFT adapter (and optionally a merged checkpoint); full FT: a Hub checkpoint."""
        cfg = self.config
        model = self.trained_model()
        out = None
        if cfg.lora.enabled and cfg.train.export_adapter:
            out = save_peft_adapter(model, self.run_dir / "adapter", base_model=self.model_path, rank=cfg.lora.rank,
                                    alpha=cfg.lora.alpha, dropout=cfg.lora.dropout)
        if cfg.lora.enabled and cfg.train.export_merged:
            out = save_pretrained(merge_lora(model), self.run_dir / "merged", tokenizer=self.tokenizer)
        if not cfg.lora.enabled and cfg.train.export_adapter:
            out = save_pretrained(model, self.run_dir / "model", tokenizer=self.tokenizer)
        return out
