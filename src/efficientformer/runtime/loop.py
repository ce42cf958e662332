"""The one training loop: classification, detection and segmentation (and the search's supernet) are plans for it.

A :class:`Plan` has three parts. The :class:`Task` says what is trained: the model and its optimiser, how one
batch becomes a loss, the batches of an epoch, how to evaluate, what a checkpoint records. The :class:`Schedule`
says for how long and in which rhythm: optimiser steps, gradient accumulation, the learning-rate schedulers,
clipping, evaluations, checkpoints and the stop signals. :class:`Reporting` says what a person sees: the log
interval, the progress bar, the curves. :func:`fit` does the rest, the same way for every task: the precision
policy (:mod:`.precision`), gradient clipping (timm's ``dispatch_clip_grad``), the EMA (timm's ``ModelEmaV3``),
DDP (``no_sync`` on the micro-steps of an accumulated step) and ``torch.compile``, resume from ``last.pth`` with
every rank's random state (also part-way through an epoch), evaluation with rank 0's buffers, ``best.pth`` and
``last.pth`` written atomically (best first), the lock on the output folder (:mod:`.lock`), a clean stop on
SIGTERM/SIGUSR1 (:mod:`.signals`), and the logs. Statistics stay on the training device and are synchronised with
the host once per logging interval; a non-finite loss stops the run there, before any checkpoint could store the
damaged weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from timm.utils import dispatch_clip_grad
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from ..utils.io import check_writable_dir, remove_stale_temporaries
from .checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    CheckpointReadError,
    gather_rng_states,
    load_state,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .distributed import (
    DistInfo,
    active,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    broadcast_module,
    wrap_ddp,
)
from .lock import run_folder_lock
from .logging import RunLog, plot_curves, progress_bar
from .precision import Precision
from .signals import DEFAULT_STOP_SIGNALS, PREEMPTED_EXIT_CODE, Preempted, StopSignals


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


@dataclasses.dataclass
class Step:
    """What one batch gave: the loss to minimise (None when nothing in the batch could be read), the number of
    samples it averages over, named parts to log, and the unreadable samples that were skipped."""

    loss: torch.Tensor | None
    samples: int = 0
    parts: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    skipped: int = 0


@dataclasses.dataclass
class Task:
    """What is trained: the model, how a batch becomes a loss, the data, the evaluation, what checkpoints record."""

    name: str
    model: nn.Module  # the plain model on its device: what checkpoints hold
    optimizer: torch.optim.Optimizer
    step: Callable[[nn.Module, Any], Step]  # (model to call: DDP/compiled wrapper, batch) -> Step; under autocast
    batches: Callable[[int, int], Iterable[Any]]  # (epoch, first batch) -> this rank's batches of that epoch
    evaluate: Callable[[nn.Module], dict[str, float]]  # collective; every rank gets the same metrics
    config: Any  # a config dataclass; saved in checkpoints
    seed: int = 0  # of the data order and of the fallback reseed
    amp: Literal["none", "bf16", "fp16"] = "none"  # resolved: see precision.resolve_amp
    ema: ModelEmaV3 | None = None
    ema_warmup: bool = False
    compile: bool = False
    find_unused: bool = False
    train_mode: Callable[[nn.Module], None] | None = None  # default: module.train()
    new_step: Callable[[], None] | None = None  # before the first batch of each optimiser step (Mixup draws there)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # stored in checkpoints (class names, ...)
    check_resume: Callable[[dict, Path], None] | None = None  # refuse a checkpoint of another model / data


@dataclasses.dataclass
class Schedule:
    """How long and in which rhythm: every count is in optimiser steps (one step = ``grad_accum`` batches)."""

    steps_per_epoch: int
    total_steps: int
    grad_accum: int = 1  # batches whose gradients are summed into one optimiser step
    epoch_scheduler: Any = None  # timm scheduler: step(epoch) after each epoch, as the official loop does
    iteration_scheduler: Any = None  # step() after each optimiser step
    clip_grad: float | None = None
    clip_mode: str = "norm"
    eval_every: int = 1  # 0: only at the end
    eval_unit: Literal["epoch", "iteration"] = "epoch"
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints (0: epoch ends and the end only)
    checkpoint_minutes: float = 0.0  # minutes between mid-epoch checkpoints, by rank 0's clock (0: off)
    stop_signals: tuple[str, ...] = DEFAULT_STOP_SIGNALS  # checkpoint and exit on these
    resume: bool = True


@dataclasses.dataclass
class Reporting:
    """What a person sees: the log interval (also the one host synchronisation), progress bar, curves, lines."""

    log_every: int = 50
    best_metric: str | None = None  # best.pth holds the checkpoint where this metric peaked
    metric_names: tuple[str, ...] = ()  # plotted against plot_x
    plot_x: str = "epoch"
    describe: Callable[[dict], str] | None = None  # a line after each evaluation
    progress: bool = True
    trackers: bool | str = False  # experiment trackers: "tensorboard,wandb,mlflow" (True: TensorBoard, the old key)


@dataclasses.dataclass
class Plan:
    task: Task
    schedule: Schedule
    output: Path
    info: DistInfo
    reporting: Reporting = dataclasses.field(default_factory=Reporting)


@dataclasses.dataclass
class RunState:
    """Where the run is; what checkpoints store under ``progress`` (and ``history``, ``best``, ``metrics``)."""

    iteration: int = 0  # optimiser steps done
    epoch: int = 0
    epoch_iter: int = 0  # optimiser steps done in this epoch
    epoch_batches: int = 0  # batches of this epoch consumed: where the sampler restarts
    ema_updates: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    best: float | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    epoch_partial: list = dataclasses.field(default_factory=list)  # per rank: [epoch sums, steps] at the checkpoint


class Meters:
    """Device-side sums, read by the host once per logging interval (``window``) and per epoch (``epoch``)."""

    def __init__(self, device: torch.device, lr: float) -> None:
        self.window = torch.zeros(3, dtype=torch.float64, device=device)  # loss * samples, samples, non-finite
        self.epoch = torch.zeros(3, dtype=torch.float64, device=device)  # loss * samples, samples, skipped
        self.epoch_steps, self.epoch_lr, self.epoch_start = 0, lr, time.perf_counter()

    def add(self, result: Step) -> None:
        loss = result.loss.detach().double()  # type: ignore[union-attr]
        stats = torch.stack(
            [loss * result.samples, torch.ones_like(loss) * result.samples, (~torch.isfinite(loss)).double()]
        )
        self.window.add_(stats)
        self.epoch[:2] += stats[:2]

    def restart_epoch(self, lr: float) -> None:
        self.epoch.zero_()
        self.epoch_steps, self.epoch_lr, self.epoch_start = 0, lr, time.perf_counter()


_END = object()


# -- the loop ----------------------------------------------------------------------------------------------------
def fit(plan: Plan) -> RunState:
    """Train ``plan`` to ``schedule.total_steps`` (resuming from ``<output>/last.pth``); returns the final state
    with the per-epoch history and the last evaluation's metrics (on every rank). A stop signal ends it with
    :class:`~efficientformer.runtime.signals.Preempted` after a checkpoint."""
    task, schedule, rep, info, out = plan.task, plan.schedule, plan.reporting, plan.info, plan.output
    with run_folder_lock(out, enabled=info.is_main), StopSignals(schedule.stop_signals) as stop:
        if info.is_main:
            check_writable_dir(out)
            remove_stale_temporaries(out)
        barrier()
        precision = Precision(task.amp, info.device)
        last_path = out / CHECKPOINT_NAME
        state = _resume(plan, precision, last_path) if schedule.resume and last_path.is_file() else RunState()
        log = RunLog(out, info.is_main, rep.trackers, config=task.config)
        log.truncate_after(state.iteration)
        meters = Meters(info.device, task.optimizer.param_groups[0]["lr"])
        if state.epoch_batches and len(state.epoch_partial) == info.world:  # resumed part-way through an epoch
            sums, meters.epoch_steps = state.epoch_partial[info.rank]
            meters.epoch.copy_(torch.tensor(sums, dtype=torch.float64))
        bar = progress_bar(schedule.total_steps, state.iteration, info.is_main and rep.progress, f"{task.name} train")

        train_model = wrap_ddp(task.model, info, find_unused=task.find_unused)  # broadcasts rank 0's weights
        if task.ema is not None:
            broadcast_module(task.ema.module)  # so every rank averages the same weights: rank 0's, as saved
        if task.compile:
            train_model = torch.compile(train_model)
        set_train_mode = task.train_mode or _train_mode
        last_save = time.monotonic()

        set_train_mode(train_model)
        while state.iteration < schedule.total_steps:
            batches = iter(task.batches(state.epoch, state.epoch_batches))
            try:
                while True:
                    if not _optimizer_step(plan, train_model, batches, precision, state, meters):
                        epoch_ended = True  # the loader ran dry before steps_per_epoch steps (unreadable samples)
                        _flush_window(plan, state, meters, log, bar)
                        break
                    bar.update(1)
                    epoch_ended = state.epoch_iter >= schedule.steps_per_epoch
                    done = state.iteration >= schedule.total_steps
                    if state.iteration % rep.log_every == 0 or epoch_ended or done:
                        _flush_window(plan, state, meters, log, bar)
                    if epoch_ended or done:
                        break
                    if (
                        schedule.eval_unit == "iteration"
                        and schedule.eval_every > 0
                        and state.iteration % schedule.eval_every == 0
                    ):
                        _flush_window(plan, state, meters, log, bar)
                        state.metrics = _evaluate(plan, state, log, bar, train_model, set_train_mode)
                    signum, save_due = _agree_on_stop(stop, schedule, state, last_save)
                    if save_due or signum:
                        _flush_window(plan, state, meters, log, bar)
                        _save(plan, state, meters, precision, improved=False)
                        last_save = time.monotonic()
                    if signum:
                        raise _preempted(plan, state, signum)
            finally:
                _close(batches)  # loader workers ignore stop signals: shut them down here, whatever happened
            done = state.iteration >= schedule.total_steps
            record = None
            if epoch_ended:
                record = _end_epoch(plan, state, meters)
                state.epoch, state.epoch_iter, state.epoch_batches = state.epoch + 1, 0, 0
            due = done
            if schedule.eval_every > 0 and not due:
                if schedule.eval_unit == "epoch":
                    due = epoch_ended and state.epoch % schedule.eval_every == 0
                else:
                    due = state.iteration % schedule.eval_every == 0
            improved = False
            if due:
                state.metrics = _evaluate(plan, state, log, bar, train_model, set_train_mode)
                value = state.metrics.get(rep.best_metric) if rep.best_metric else None
                if value is not None and (state.best is None or value > state.best):
                    state.best, improved = value, True
            if record is not None:
                record.update({k: v for k, v in state.metrics.items() if due})
                state.history.append(record)
                if info.is_main:
                    log.write(kind="epoch", **record)
                    if rep.describe is not None and schedule.eval_unit == "epoch":
                        bar.write(rep.describe(record))
            if epoch_ended:
                meters.restart_epoch(task.optimizer.param_groups[0]["lr"])
            _save(plan, state, meters, precision, improved)
            last_save = time.monotonic()
            if info.is_main and state.history:
                plot_curves(state.history, out / "curves.png", rep.metric_names, rep.plot_x)
            barrier()
            signum, _ = _agree_on_stop(stop, schedule, state, last_save)
            if signum and state.iteration < schedule.total_steps:
                raise _preempted(plan, state, signum)
        bar.close()
        log.close()
    return state


# -- one optimiser step ------------------------------------------------------------------------------------------
def _optimizer_step(
    plan: Plan, train_model: nn.Module, batches: Iterator, precision: Precision, state: RunState, meters: Meters
) -> bool:
    """Forward and backward ``grad_accum`` batches that have a loss (their gradients summed, each loss divided by
    ``grad_accum``: the mean over the effective batch), then one clipped optimiser step, the scheduler and the EMA.
    Under DDP only the last batch all-reduces the gradients (``no_sync`` before). False, without a step, when the
    loader runs dry first: a part-filled step is dropped, as ``drop_last`` drops a part-filled batch."""
    task, schedule = plan.task, plan.schedule
    if task.new_step is not None:
        task.new_step()
    task.optimizer.zero_grad(set_to_none=True)
    ddp = _ddp_of(train_model)
    with_loss = 0
    while with_loss < schedule.grad_accum:
        batch = _next_batch(batches)
        if batch is _END:
            return False
        state.epoch_batches += 1
        last = with_loss == schedule.grad_accum - 1
        with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
            with precision.autocast():
                result = task.step(train_model, batch)
            if result.skipped:
                meters.epoch[2] += result.skipped
            if result.loss is None:
                continue
            precision.backward(result.loss / schedule.grad_accum if schedule.grad_accum > 1 else result.loss)
        meters.add(result)
        with_loss += 1
    if schedule.clip_grad:
        precision.unscale(task.optimizer)
        params = [p for p in task.model.parameters() if p.requires_grad]
        dispatch_clip_grad(params, schedule.clip_grad, mode=schedule.clip_mode)
    precision.step(task.optimizer)
    if schedule.iteration_scheduler is not None:
        schedule.iteration_scheduler.step()
    if task.ema is not None:
        state.ema_updates += 1
        task.ema.update(task.model, step=state.ema_updates if task.ema_warmup else None)
    state.iteration, state.epoch_iter, meters.epoch_steps = (
        state.iteration + 1,
        state.epoch_iter + 1,
        meters.epoch_steps + 1,
    )
    return True


def _next_batch(batches: Iterator) -> Any:
    """The next batch (``_END`` after the last). An error raised in a DataLoader worker process reaches the main
    process as PyTorch's re-raise, whose message is "Caught X in DataLoader worker process N." followed by the
    worker's traceback as text; it is raised again with the worker's own message (an ``AugmentationError`` naming
    the op and the file, say), so the one line a user sees is the same with and without workers."""
    try:
        return next(batches, _END)
    except Exception as err:
        original = _worker_message(err)
        if original is None:
            raise
        try:
            again = type(err)(original)
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments: keep PyTorch's
            raise err from None
        raise again from err


def _worker_message(err: BaseException) -> str | None:
    """The original message inside PyTorch's re-raise of a DataLoader worker's exception; None for any other."""
    text = str(err)
    if not (text.startswith("Caught ") and " in DataLoader worker process " in text.split("\n", 1)[0]):
        return None
    header = re.compile(rf"^(?:[\w.]+\.)?{re.escape(type(err).__name__)}: (.*)$")
    for line in reversed(text.splitlines()):
        found = header.match(line)
        if found:
            return found.group(1)
    return None


def _close(batches: Iterator) -> None:
    """Shut down a DataLoader iterator's worker processes now (they ignore SIGTERM: see signals.py), instead of
    whenever the iterator is collected: an exception's traceback can keep it alive until the interpreter exits."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper under a ``torch.compile`` wrapper (or the model itself), if any."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


def _train_mode(module: nn.Module) -> None:
    module.train()


# -- stopping ----------------------------------------------------------------------------------------------------
def _agree_on_stop(stop: StopSignals, schedule: Schedule, state: RunState, last_save: float) -> tuple[int, bool]:
    """``(signal number or 0, periodic checkpoint due)``, the same on every rank: one all-reduce of a CPU tensor
    (gloo, even beside NCCL: it never waits for the GPU). A signal delivered to any rank stops them all at the same
    step; the minutes-based checkpoint follows rank 0's clock."""
    due = schedule.checkpoint_every > 0 and state.iteration % schedule.checkpoint_every == 0
    timed = schedule.checkpoint_minutes > 0 and time.monotonic() - last_save >= 60 * schedule.checkpoint_minutes
    flags = torch.tensor([stop.received or 0, int(timed)], dtype=torch.int64)
    if active():
        if not _is_rank0():
            flags[1] = 0
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return int(flags[0]), bool(due or flags[1])


def _is_rank0() -> bool:
    return torch.distributed.get_rank() == 0


def _preempted(plan: Plan, state: RunState, signum: int) -> Preempted:
    barrier()  # no rank exits before rank 0 has written the checkpoint (torchrun stops the others on the first exit)
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
    message = (
        f"stopped by {name} after iteration {state.iteration} of {plan.schedule.total_steps} (epoch "
        f"{state.epoch + 1}, batch {state.epoch_batches}); checkpoint {plan.output / CHECKPOINT_NAME} written; "
        f"run the same command again to resume (exit status {PREEMPTED_EXIT_CODE})"
    )
    if plan.info.is_main:
        print(message, flush=True)
    return Preempted(signum, message)


# -- reporting, evaluation, checkpoints --------------------------------------------------------------------------
def _flush_window(plan: Plan, state: RunState, meters: Meters, log: RunLog, bar) -> None:
    """The one host synchronisation of the interval: the global mean loss, and the non-finite check."""
    all_reduce_sum(meters.window)
    loss_sum, samples, bad = meters.window.tolist()
    meters.window.zero_()
    lr = plan.task.optimizer.param_groups[0]["lr"]
    if bad:
        last_path = plan.output / CHECKPOINT_NAME
        where = (
            f"the last good checkpoint is kept in {last_path} (iteration "
            f"{read_checkpoint(last_path)['progress']['iteration']})"
            if last_path.is_file()
            else "no checkpoint was written yet (it happened before the first one)"
        )
        raise NonFiniteLossError(
            f"the loss became NaN or infinite by iteration {state.iteration} (epoch "
            f"{state.epoch + 1}); stopped: {where}. Lower lr, enable clip_grad, or check the "
            "data"
        )
    if samples:
        loss = loss_sum / samples
        log.write(kind="train", iteration=state.iteration, epoch=state.epoch, lr=lr, loss=round(loss, 6))
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")


def _evaluate(
    plan: Plan, state: RunState, log: RunLog, bar, train_model: nn.Module, set_train_mode: Callable[[nn.Module], None]
) -> dict:
    task = plan.task
    broadcast_buffers(task.model)
    metrics = dict(task.evaluate(task.model))
    if task.ema is not None:
        broadcast_buffers(task.ema.module)
        for key, value in task.evaluate(task.ema.module).items():
            metrics["ema_" + key.removeprefix("val_")] = value
    set_train_mode(train_model)
    if plan.info.is_main:
        log.write(kind="eval", iteration=state.iteration, epoch=state.epoch, **metrics)
        if plan.reporting.describe is not None and plan.schedule.eval_unit == "iteration":
            bar.write(plan.reporting.describe({"iteration": state.iteration, "epoch": state.epoch, **metrics}))
    return metrics


def _end_epoch(plan: Plan, state: RunState, meters: Meters) -> dict:
    all_reduce_sum(meters.epoch)
    loss_sum, samples, skipped = meters.epoch.tolist()
    seconds = time.perf_counter() - meters.epoch_start
    record = {
        "epoch": state.epoch + 1,
        "iteration": state.iteration,
        "lr": meters.epoch_lr,
        "train_loss": loss_sum / max(samples, 1),
        "images_per_s": samples / max(seconds, 1e-9),
        "train_skipped": int(skipped),
        "epoch_seconds": seconds,
        "steps": meters.epoch_steps,
    }
    if plan.schedule.epoch_scheduler is not None:
        plan.schedule.epoch_scheduler.step(state.epoch)  # after the epoch, with its index: the official loop's order
    return record


def _save(plan: Plan, state: RunState, meters: Meters, precision: Precision, improved: bool) -> None:
    """Write ``last.pth`` (and ``best.pth`` first when ``improved``). A collective: every rank leaves with rank 0's
    buffers, the ones saved, and each rank's random state and partial-epoch statistics are kept, so a resumed run
    continues every rank exactly."""
    task, schedule = plan.task, plan.schedule
    broadcast_buffers(task.model)
    if task.ema is not None:
        broadcast_buffers(task.ema.module)
    rng = gather_rng_states()
    partial = all_gather_objects([meters.epoch.tolist(), meters.epoch_steps])
    if not plan.info.is_main:
        return
    saved = {
        "task": task.name,
        "model": task.model.state_dict(),
        "model_ema": task.ema.module.state_dict() if task.ema is not None else None,
        "ema_updates": state.ema_updates,
        "optimizer": task.optimizer.state_dict(),
        "scheduler": {
            "epoch_scheduler": schedule.epoch_scheduler.state_dict() if schedule.epoch_scheduler else None,
            "iteration_scheduler": schedule.iteration_scheduler.state_dict() if schedule.iteration_scheduler else None,
        },
        "scaler": precision.state_dict(),
        "progress": {
            "iteration": state.iteration,
            "epoch": state.epoch,
            "epoch_iter": state.epoch_iter,
            "epoch_batches": state.epoch_batches,
            "epoch_partial": partial,
            "data_seed": task.seed,
            "grad_accum": schedule.grad_accum,
            "steps_per_epoch": schedule.steps_per_epoch,
        },
        "rng": rng,
        "world_size": plan.info.world,
        "config": dataclasses.asdict(task.config),
        "history": state.history,
        "metrics": state.metrics,
        "best": {"metric": plan.reporting.best_metric, "value": state.best},
        **task.meta,
    }
    if improved:  # best first: a kill between the two writes never leaves last.pth naming a newer best
        save_checkpoint(plan.output / BEST_NAME, saved)
    save_checkpoint(plan.output / CHECKPOINT_NAME, saved)


def _resume(plan: Plan, precision: Precision, path: Path) -> RunState:
    task, schedule, info = plan.task, plan.schedule, plan.info
    ckpt = read_checkpoint(path)
    if task.check_resume is not None:
        task.check_resume(ckpt, path)
    load_state(task.model, ckpt["model"], "model", path)
    if task.ema is not None and ckpt.get("model_ema") is not None:
        load_state(task.ema.module, ckpt["model_ema"], "EMA model", path)
    load_state(task.optimizer, ckpt["optimizer"], "optimizer state", path)
    if schedule.iteration_scheduler is not None and ckpt.get("scheduler", {}).get("iteration_scheduler") is not None:
        load_state(schedule.iteration_scheduler, ckpt["scheduler"]["iteration_scheduler"], "scheduler state", path)
    if ckpt.get("scaler"):
        load_state(precision, ckpt["scaler"], "gradient scaler state", path)
    progress = ckpt.get("progress", {})
    epoch_iter = int(progress.get("epoch_iter", 0))
    _check_grad_accum(progress, schedule, path)
    state = RunState(
        iteration=int(progress.get("iteration", 0)),
        epoch=int(progress.get("epoch", 0)),
        epoch_iter=epoch_iter,
        epoch_batches=int(progress.get("epoch_batches", epoch_iter)),  # older checkpoints: one batch per step
        ema_updates=int(ckpt.get("ema_updates", 0)),
        history=list(ckpt.get("history", [])),
        best=ckpt.get("best", {}).get("value"),
        metrics=dict(ckpt.get("metrics", {})),
        epoch_partial=list(progress.get("epoch_partial", [])),
    )
    if schedule.epoch_scheduler is not None and state.epoch > 0:
        # A per-epoch schedule is a function of the epoch: set the rate the straight run set after the last epoch
        # (so a run resumed with more epochs follows its new schedule instead of the saved one).
        schedule.epoch_scheduler.step(state.epoch - 1)
    exact = restore_rng(ckpt.get("rng"), info, task.seed, state.epoch)
    if info.is_main:
        note = "" if exact else " (saved with another number of processes: random streams reseeded)"
        where = f", batch {state.epoch_batches}" if state.epoch_batches else ""
        print(
            f"resuming from {path}: iteration {state.iteration} of {schedule.total_steps}, epoch {state.epoch}"
            f"{where}{note}",
            flush=True,
        )
    return state


def _check_grad_accum(progress: dict, schedule: Schedule, path: Path) -> None:
    """Refuse, in one line, a resume whose ``grad_accum`` differs from the checkpoint's where that cannot continue
    the run: part-way through an epoch (the position is counted in batches of the old optimiser steps), and at an
    epoch end when the epoch's number of optimiser steps changed (the run's step counts would be in other units).
    A change that keeps the steps per epoch (fewer processes, more accumulation: the same effective batch) is
    allowed at an epoch end."""
    saved = int(progress.get("grad_accum", 1))
    if saved == schedule.grad_accum:
        return
    batches, spe = int(progress.get("epoch_batches", 0)), progress.get("steps_per_epoch")
    redo = f"resume with grad_accum={saved}, or start a new --output (finetune= takes its weights)"
    if batches:
        raise CheckpointReadError(
            f"cannot resume from {path} with grad_accum={schedule.grad_accum}: it was written part-way through epoch "
            f"{int(progress.get('epoch', 0)) + 1} (batch {batches}) with grad_accum={saved}, and a mid-epoch "
            f"checkpoint continues only with the accumulation it was written with; {redo}"
        )
    if spe is not None and int(spe) != schedule.steps_per_epoch:
        raise CheckpointReadError(
            f"cannot resume from {path} with grad_accum={schedule.grad_accum}: it was written with grad_accum={saved} "
            f"and {int(spe)} optimiser steps per epoch, now {schedule.steps_per_epoch} (its iteration count and "
            f"schedule are in its own steps); keep batch_size x grad_accum x processes, or {redo}"
        )


__all__ = [
    "Plan",
    "Task",
    "Schedule",
    "Reporting",
    "RunState",
    "Step",
    "fit",
    "NonFiniteLossError",
    "CHECKPOINT_NAME",
    "BEST_NAME",
]
