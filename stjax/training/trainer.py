"""The training loop: a Trainer runs the parts it is given to the end or to a stop.

Parts: the train program (jitted step, shardings, frozen weights), the train state, the
batches (resumable: get_state/set_state), the checkpointer, the metrics log directory and
an exporter. `stjax.training.build.build_trainer` assembles them from a TrainConfig; tests
and scripts may assemble them differently (`dataclasses.replace(trainer, batches=...)`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import optax
from flax import nnx

from stjax.errors import UserError
from stjax.logs import get_logger
from stjax.training.agreement import StopAgreement
from stjax.training.checkpointing import Checkpointer, CheckpointWriteError, is_damage
from stjax.training.metrics_log import MetricsLog, MetricsWriteError, WandbSection
from stjax.training.preemption import StopRequest
from stjax.training.program import TrainProgram
from stjax.training.step import TrainState


logger = get_logger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    final_step: int
    stopped_by: str | None  # signal name when preempted
    losses: list[float]
    export_dir: Path | None


@dataclasses.dataclass
class LoopSettings:
    total_steps: int
    log_every: int = 1
    checkpoint_every: int = 500
    resume: bool = True  # continue from the checkpointer's latest step when there is one
    progress: bool = True
    tensorboard: bool = True
    steps_per_epoch: int | None = None  # for the logged epoch
    hparams: dict | None = None  # the resolved config, for TensorBoard and W&B
    wandb: WandbSection | None = None
    eval_every: int | None = None  # with an evaluate function: every N steps (None: at the end only)


def _host_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


@dataclasses.dataclass
class Trainer:
    program: TrainProgram
    state: TrainState
    batches: Any  # an iterator of host batches with get_state / set_state
    checkpointer: Checkpointer
    run_dir: Path
    schedule: optax.Schedule  # logged as lr
    settings: LoopSettings
    export: Callable[[nnx.Module], Path | None] | None = None  # trained model -> export directory
    on_start: Callable[[], None] | None = None  # e.g. write the resolved config
    evaluate: Callable[[TrainState], dict[str, float]] | None = None  # validation metrics of a state
    on_end: Callable[[], None] | None = None  # after the run, however it ends (e.g. release the run lock)

    def maybe_resume(self) -> int:
        """Restores the newest intact checkpoint; a damaged one (a file missing or cut short) is
        set aside as broken-<step> with a message, and the one before it is tried."""
        if not self.settings.resume:
            return 0
        broken = []
        while (latest := self.checkpointer.latest_step()) is not None:
            try:
                self.state, data_state = self.checkpointer.restore(latest, self.state, self.program.state_shardings)
            except Exception as e:
                reason = " ".join(str(e).split())[:200]
                if not is_damage(e):
                    raise UserError(f"{self.checkpointer.directory}: checkpoint {latest} does not fit this run "
                                    f"({reason})") from None
                self.checkpointer.set_aside(latest, to_step=latest, why="broken")
                broken.append(latest)
                logger.warning(f"checkpoint {latest} in {self.checkpointer.directory} is damaged ({reason[:120]}); "
                               f"set aside as broken-{latest}, trying the one before it")
                continue
            self.batches.set_state(data_state)
            logger.info(f"resuming from checkpoint {latest} in {self.checkpointer.directory}")
            return latest
        if broken:
            raise UserError(f"{self.checkpointer.directory}: no intact checkpoint left (set aside as broken: "
                            f"{', '.join(f'broken-{s}' for s in broken)}); rerun to start from the initial weights")
        return 0

    def trained_model(self) -> nnx.Module:
        return nnx.merge(self.program.graphdef, self.state.params, self.program.frozen.rest)

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self.on_end is not None:
                self.on_end()

    def _unwritten_metrics(self, error: MetricsWriteError) -> MetricsWriteError:
        """The metrics' write failure, with where a rerun resumes."""
        return MetricsWriteError(f"{error}; {self.checkpointer.resumes_from()}")

    def _run(self) -> TrainResult:
        from tqdm.auto import tqdm

        if self.on_start is not None:
            self.on_start()
        start = self.maybe_resume()
        cfg = self.settings
        try:
            log = MetricsLog(self.run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb, config=cfg.hparams)
        except MetricsWriteError as e:
            self.checkpointer.close()  # nothing saved yet: releases its threads
            raise self._unwritten_metrics(e) from None
        bar = tqdm(total=cfg.total_steps, initial=start, unit="step", desc="train", dynamic_ncols=True,
                   disable=not cfg.progress or jax.process_index() != 0)
        losses: list[float] = []
        pending = None  # (step, metrics) of the step in flight
        last_settled = time.perf_counter()
        stopped_by = None
        step = start
        batches = iter(self.batches)

        shapes: set = set()  # batch shapes compiled so far: each new one compiles the step
        compile_time: dict[int, float] = {}  # step -> seconds spent compiling before it ran

        def settle(entry, extra: dict | None = None, extra_s: float = 0.0):
            nonlocal last_settled
            done_step, metrics = entry
            values = _host_metrics(metrics)
            if not math.isfinite(values["loss"]):
                # loss k is computed with the weights after update k - 1: the checkpoint of step
                # k - 1 (and any later one) holds weights that diverge, so a rerun must not resume there
                bad = self.checkpointer.set_aside(done_step - 1)
                good = self.checkpointer.latest_step()
                where = (f"step {good} in {self.checkpointer.directory} (a rerun resumes there)" if good is not None
                         else "none (a rerun starts from the initial weights)")
                aside = f"; set aside the checkpoint of step {bad[0]} (diverged-{bad[0]})" if bad else ""
                raise TrainingDiverged(f"step {done_step}: loss is {values['loss']}; stopped{aside}. "
                                       f"Last good checkpoint: {where}")
            now = time.perf_counter()
            compiling = compile_time.pop(done_step, 0.0)
            elapsed, last_settled = max(now - last_settled - compiling - extra_s, 1e-9), now
            values.update(step=done_step, lr=float(self.schedule(done_step - 1)), step_s=elapsed,
                          tokens_per_sec=values["tokens"] / elapsed,
                          response_tokens_per_sec=values["response_tokens"] / elapsed)
            if cfg.steps_per_epoch:
                values["epoch"] = done_step / cfg.steps_per_epoch
            if compiling:
                values["compile_s"] = compiling  # apart from step_s and the throughputs
            if extra:
                values.update(extra, eval_s=extra_s)
            losses.append(values["loss"])
            if done_step % cfg.log_every == 0 or done_step == cfg.total_steps:
                log.write(values)
            bar.set_description("train")
            bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_sec']:.0f}")
            bar.update(1)

        failure = None  # the error ending the run, if one does: the metrics' final summary is skipped
        try:
            with StopRequest() as stop:
                agreement = StopAgreement()  # every process stops at the same step
                while step < cfg.total_steps:
                    batch = self.program.device_batch(next(batches))
                    shape = tuple(batch["inputs"].shape)
                    if shape not in shapes:  # tracing and compiling happen in the call, before dispatch
                        bar.set_description(f"train (compiling for batch {shape[0]}x{shape[1]})")
                        bar.refresh()
                    began = time.perf_counter()
                    self.state, metrics = self.program.step(self.state, self.program.frozen, batch)
                    step += 1
                    if shape not in shapes:
                        shapes.add(shape)
                        compile_time[step] = time.perf_counter() - began
                        bar.unpause()  # the ETA counts steps, not the compilation
                        logger.debug(f"train step compiled for batch {shape[0]}x{shape[1]} in {compile_time[step]:.1f} s")
                    if pending is not None:  # read the previous step while this one runs
                        settle(pending)
                    pending = (step, metrics)
                    if self.evaluate is not None and (step == cfg.total_steps or (
                            cfg.eval_every and step % cfg.eval_every == 0)):
                        began = time.perf_counter()
                        scores = self.evaluate(self.state)  # the state after this step, before the next
                        settle(pending, scores, extra_s=time.perf_counter() - began)
                        pending = None
                    stopped_by = agreement.poll(stop.signal_name)
                    if step % cfg.checkpoint_every == 0 or step == cfg.total_steps or stopped_by:
                        if pending is not None:
                            settle(pending)
                        pending = None
                        self.checkpointer.save(step, self.state, self.batches.get_state())
                    if stopped_by:
                        break
                if pending is not None:
                    settle(pending)
        except BaseException as error:  # the error in flight is the one to report; a failed save is logged
            failure = error
            try:
                self.checkpointer.close()
            except CheckpointWriteError as e:
                logger.warning(str(e))
            if isinstance(error, MetricsWriteError):
                raise self._unwritten_metrics(error) from None
            raise
        else:
            try:
                self.checkpointer.close()  # the last save's failure surfaces here
            except BaseException as error:
                failure = error
                raise
        finally:
            bar.close()
            try:
                log.close(final=failure is None)
            except MetricsWriteError as e:
                if failure is not None:
                    logger.warning(str(e))
                else:
                    raise self._unwritten_metrics(e) from None
        export_dir = None if stopped_by or self.export is None else self.export(self.trained_model())
        return TrainResult(step, stopped_by, losses, export_dir)
