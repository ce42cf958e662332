"""The one training loop: classification, detection and segmentation (and the search's supernet) are plans for it.

A :class:`Plan` says what differs between tasks: the model, how one batch becomes a loss, the batches of an epoch,
the schedule, how to evaluate. :func:`fit` does the rest, the same way for every task: mixed precision, gradient
scaling and clipping (timm's ``dispatch_clip_grad``), the EMA (timm's ``ModelEmaV3``), DDP and ``torch.compile``,
resume from ``last.pth`` with every rank's random state, evaluation with rank 0's buffers, ``best.pth`` and
``last.pth`` written atomically (best first), and the logs. Statistics stay on the training device and are
synchronised with the host once per logging interval; a non-finite loss stops the run there, before any checkpoint
could store the damaged weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from timm.utils import dispatch_clip_grad
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..utils.io import check_writable_dir, remove_stale_temporaries
from ..utils.machine import bf16_support
from ..utils.timing import time_interleaved
from .checkpoint import gather_rng_states, load_state, read_checkpoint, restore_rng, save_checkpoint
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    broadcast_module,
    wrap_ddp,
)
from .logging import RunLog, plot_curves, progress_bar

CHECKPOINT_NAME, BEST_NAME = "last.pth", "best.pth"


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
class Plan:
    task: str
    model: nn.Module  # the plain model on its device: what checkpoints hold
    optimizer: torch.optim.Optimizer
    step: Callable[[nn.Module, Any], Step]  # (model to call: DDP/compiled wrapper, batch) -> Step; under autocast
    batches: Callable[[int, int], Iterable[Any]]  # (epoch, first batch) -> this rank's batches of that epoch
    steps_per_epoch: int
    total_steps: int
    evaluate: Callable[[nn.Module], dict[str, float]]  # collective; every rank gets the same metrics
    config: Any  # a config dataclass; saved in checkpoints
    output: Path
    info: DistInfo
    seed: int = 0
    epoch_scheduler: Any = None  # timm scheduler: step(epoch) after each epoch, as the official loop does
    iteration_scheduler: Any = None  # step() after each iteration
    ema: ModelEmaV3 | None = None
    ema_warmup: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"
    clip_grad: float | None = None
    clip_mode: str = "norm"
    compile: bool = False
    find_unused: bool = False
    train_mode: Callable[[nn.Module], None] | None = None  # default: module.train()
    eval_every: int = 1  # 0: only at the end
    eval_unit: Literal["epoch", "iteration"] = "epoch"
    checkpoint_every: int = 0  # iterations between mid-epoch checkpoints (0: epoch ends and the end only)
    log_every: int = 50
    best_metric: str | None = None  # best.pth holds the checkpoint where this metric peaked
    metric_names: tuple[str, ...] = ()  # plotted against plot_x
    plot_x: str = "epoch"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # stored in checkpoints (class names, ...)
    check_resume: Callable[[dict, Path], None] | None = None  # refuse a checkpoint of another model / data
    describe: Callable[[dict], str] | None = None  # a line after each evaluation
    resume: bool = True
    progress: bool = True
    tensorboard: bool | str = False  # experiment trackers: True (TensorBoard) or "tensorboard,wandb,mlflow"


AMP_CHOICES = ("auto", "none", "bf16", "fp16")


#: ``amp=auto`` on a CPU picks bf16 only when the probe measures at least this speed-up over fp32
CPU_BF16_MIN_SPEEDUP = 1.1


def resolve_amp(
    amp: str,
    device: torch.device,
    recorded: str | None = None,
    probe: Callable[[], float] | None = None,
    log: Callable[[str], None] | None = None,
) -> Literal["none", "bf16", "fp16"]:
    """The autocast precision of a run; ``none``, ``bf16`` and ``fp16`` are taken as they are.

    ``auto``: bf16 on CUDA GPUs that support it (no loss scaling needed). On a CPU with native bf16 (AVX512-BF16
    or AMX-BF16), bf16 when ``probe()`` (e.g. :func:`cpu_bf16_speedup` of the model) measures it at least
    :data:`CPU_BF16_MIN_SPEEDUP` times faster than fp32 here and now: on the project's AMX machine the same flag
    made V2-S0's training step 1.34x faster on one day and 2.3x slower on another (benchmarks/README.md, goal 5),
    so it is measured, not assumed; without a probe, fp32. fp32 elsewhere. ``recorded``: the precision a resumed
    run was started with, kept so the resumed run computes what the straight run would have. Under DDP every rank
    takes rank 0's measurement. ``log`` gets the measurement."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp != "auto":
        return amp  # type: ignore[return-value]
    if recorded in ("none", "bf16", "fp16"):
        return recorded  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    if device.type != "cpu" or probe is None or not bf16_support()[0]:
        return "none"
    speedup = all_gather_objects(probe())[0]  # rank 0's measurement for every rank
    choice = "bf16" if speedup >= CPU_BF16_MIN_SPEEDUP else "none"
    if log is not None:
        log(f"amp=auto: a training step in bf16 measured {speedup:.2f}x fp32 on this CPU (needs "
            f"{CPU_BF16_MIN_SPEEDUP}x) -> {choice}")  # fmt: skip
    return choice  # type: ignore[return-value]


def cpu_bf16_speedup(model: nn.Module, example: torch.Tensor, rounds: int = 3) -> float:
    """fp32 time / bf16-autocast time of a forward and backward pass of a copy of ``model`` (train mode, as it is:
    layout included) on ``example``, timed interleaved at the current thread count after one warm-up call each.
    The copy keeps the run's model, its BatchNorm statistics and the random streams untouched."""
    probe = copy.deepcopy(model).train()
    rng = torch.random.get_rng_state()

    def step(dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
                out = probe(example)
            out = out[0] if isinstance(out, tuple | list) else out
            out.float().mean().backward()
            probe.zero_grad(set_to_none=True)

        return run

    try:
        times = time_interleaved({"fp32": step(None), "bf16": step(torch.bfloat16)}, warmup=1, runs=rounds)
    finally:
        torch.random.set_rng_state(rng)  # drop-path draws in the probe must not shift the run's stream
    return statistics.median(times["fp32"]) / max(statistics.median(times["bf16"]), 1e-9)


def recorded_precision(output: str | Path) -> str | None:
    """The ``amp`` recorded in ``<output>/last.pth`` (the run a resume continues), or None (no such checkpoint, or
    one that cannot be read: the loop's resume reports that in one line)."""
    path = Path(output) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return (read_checkpoint(path).get("precision") or {}).get("amp")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """``None`` (auto): channels-last on CUDA and on CPU, where oneDNN's convolutions run NHWC without reorders
    (measured on the training step, fp32, 2 threads: V2-S0 1.05-1.10x, L1 1.30-1.99x over NCHW); explicit values are
    kept."""
    if channels_last is not None:
        return channels_last
    return device.type in ("cuda", "cpu")


def keep_channels_last_gradients(model: nn.Module) -> list[RemovableHandle]:
    """Make the gradient that reaches each BatchNorm2d output channels-last whenever the output is.

    A BatchNorm output that feeds a reshape (V2's attention q/k/v projections, the final norm before pooling) gets
    an NCHW-contiguous gradient back, and PyTorch's BatchNorm backward with a channels-last input and an NCHW
    gradient is 3-6x slower on a CPU than with both channels-last (V2-S0's (16, 1024, 7, 7) value projection: 15.1
    vs 5.3 ms fp32, 7.9 vs 2.8 ms bf16; benchmarks/README.md, goal 5). One copy of the gradient costs far less.
    Gradient values are unchanged. Returns the hook handles (``handle.remove()`` undoes it)."""

    def to_channels_last(grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if out.requires_grad and out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last):
            out.register_hook(to_channels_last)

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def autocast(device: torch.device, amp: str):
    """The autocast context of a resolved ``amp`` (``none``, ``bf16`` or ``fp16``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclasses.dataclass
class _State:
    iteration: int = 0
    epoch: int = 0
    epoch_iter: int = 0
    ema_updates: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    best: float | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    epoch_partial: list = dataclasses.field(default_factory=list)  # per rank: [epoch sums, steps] at the checkpoint


def _resume(plan: Plan, scaler: torch.amp.GradScaler, path: Path) -> _State:
    ckpt = read_checkpoint(path)
    if plan.check_resume is not None:
        plan.check_resume(ckpt, path)
    load_state(plan.model, ckpt["model"], "model", path)
    if plan.ema is not None and ckpt.get("model_ema") is not None:
        load_state(plan.ema.module, ckpt["model_ema"], "EMA model", path)
    load_state(plan.optimizer, ckpt["optimizer"], "optimizer state", path)
    if plan.iteration_scheduler is not None and ckpt.get("scheduler", {}).get("iteration_scheduler") is not None:
        load_state(plan.iteration_scheduler, ckpt["scheduler"]["iteration_scheduler"], "scheduler state", path)
    if ckpt.get("scaler"):
        load_state(scaler, ckpt["scaler"], "gradient scaler state", path)
    progress = ckpt.get("progress", {})
    state = _State(
        iteration=int(progress.get("iteration", 0)),
        epoch=int(progress.get("epoch", 0)),
        epoch_iter=int(progress.get("epoch_iter", 0)),
        ema_updates=int(ckpt.get("ema_updates", 0)),
        history=list(ckpt.get("history", [])),
        best=ckpt.get("best", {}).get("value"),
        metrics=dict(ckpt.get("metrics", {})),
        epoch_partial=list(progress.get("epoch_partial", [])),
    )
    if plan.epoch_scheduler is not None and state.epoch > 0:
        # A per-epoch schedule is a function of the epoch: set the rate the straight run set after the last epoch
        # (so a run resumed with more epochs follows its new schedule instead of the saved one).
        plan.epoch_scheduler.step(state.epoch - 1)
    exact = restore_rng(ckpt.get("rng"), plan.info, plan.seed, state.epoch)
    if plan.info.is_main:
        note = "" if exact else " (saved with another number of processes: random streams reseeded)"
        print(f"resuming from {path}: iteration {state.iteration} of {plan.total_steps}, epoch {state.epoch}{note}",
              flush=True)  # fmt: skip
    return state


def fit(plan: Plan) -> _State:
    """Train ``plan`` to ``plan.total_steps`` (resuming from ``<output>/last.pth``); returns the final state with
    the per-epoch history and the last evaluation's metrics (on every rank)."""
    info, model, optimizer, out = plan.info, plan.model, plan.optimizer, plan.output
    device = info.device
    if info.is_main:
        check_writable_dir(out)
        remove_stale_temporaries(out)
    barrier()
    last_path, best_path = out / CHECKPOINT_NAME, out / BEST_NAME
    scaler = torch.amp.GradScaler(device.type, enabled=plan.amp == "fp16")
    state = _resume(plan, scaler, last_path) if plan.resume and last_path.is_file() else _State()
    log = RunLog(out, info.is_main, plan.tensorboard, config=plan.config)
    log.truncate_after(state.iteration)

    train_model = wrap_ddp(model, info, find_unused=plan.find_unused)  # broadcasts rank 0's weights
    if plan.ema is not None:
        broadcast_module(plan.ema.module)  # so every rank averages the same weights: rank 0's, as saved
    if plan.compile:
        train_model = torch.compile(train_model)
    set_train_mode = plan.train_mode or (lambda m: m.train())
    params = [p for p in model.parameters() if p.requires_grad]

    # Device-side accumulators, read by the host once per logging interval / epoch.
    window = torch.zeros(3, dtype=torch.float64, device=device)  # loss * samples, samples, non-finite losses
    epoch_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * samples, samples, skipped
    epoch_lr, epoch_start, epoch_steps = optimizer.param_groups[0]["lr"], time.perf_counter(), 0
    if state.epoch_iter and len(state.epoch_partial) == info.world:  # resumed part-way through an epoch
        sums, epoch_steps = state.epoch_partial[info.rank]
        epoch_sums.copy_(torch.tensor(sums, dtype=torch.float64))
    bar = progress_bar(plan.total_steps, state.iteration, info.is_main and plan.progress, f"{plan.task} train")

    def flush_window() -> None:
        """The one host synchronisation of the interval: the global mean loss, and the non-finite check."""
        all_reduce_sum(window)
        loss_sum, samples, bad = window.tolist()
        window.zero_()
        if bad:
            where = (f"the last good checkpoint is kept in {last_path} (iteration "
                     f"{read_checkpoint(last_path)['progress']['iteration']})" if last_path.is_file() else
                     "no checkpoint was written yet (it happened before the first one)")  # fmt: skip
            raise NonFiniteLossError(f"the loss became NaN or infinite by iteration {state.iteration} (epoch "
                                     f"{state.epoch + 1}); stopped: {where}. Lower lr, enable clip_grad, or check the "
                                     "data")  # fmt: skip
        if samples:
            loss = loss_sum / samples
            log.write(kind="train", iteration=state.iteration, epoch=state.epoch, lr=optimizer.param_groups[0]["lr"],
                      loss=round(loss, 6))  # fmt: skip
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")

    def evaluate() -> dict:
        broadcast_buffers(model)
        metrics = dict(plan.evaluate(model))
        if plan.ema is not None:
            broadcast_buffers(plan.ema.module)
            for key, value in plan.evaluate(plan.ema.module).items():
                metrics["ema_" + key.removeprefix("val_")] = value
        set_train_mode(train_model)
        if info.is_main:
            log.write(kind="eval", iteration=state.iteration, epoch=state.epoch, **metrics)
            if plan.describe is not None and plan.eval_unit == "iteration":
                bar.write(plan.describe({"iteration": state.iteration, "epoch": state.epoch, **metrics}))
        return metrics

    def checkpoint(improved: bool) -> None:
        # Collectives (every rank takes part): every rank leaves with rank 0's buffers, the ones saved, and each
        # rank's random state and partial-epoch statistics are kept, so a resumed run continues every rank exactly.
        broadcast_buffers(model)
        if plan.ema is not None:
            broadcast_buffers(plan.ema.module)
        rng = gather_rng_states()
        partial = all_gather_objects([epoch_sums.tolist(), epoch_steps])
        if info.is_main:
            saved = {
                "task": plan.task,
                "model": model.state_dict(),
                "model_ema": plan.ema.module.state_dict() if plan.ema is not None else None,
                "ema_updates": state.ema_updates,
                "optimizer": optimizer.state_dict(),
                "scheduler": {
                    "epoch_scheduler": plan.epoch_scheduler.state_dict() if plan.epoch_scheduler else None,
                    "iteration_scheduler": plan.iteration_scheduler.state_dict() if plan.iteration_scheduler else None,
                },  # fmt: skip
                "scaler": scaler.state_dict(),
                "progress": {
                    "iteration": state.iteration,
                    "epoch": state.epoch,
                    "epoch_iter": state.epoch_iter,
                    "epoch_partial": partial,
                },  # fmt: skip
                "rng": rng,
                "world_size": info.world,
                "config": dataclasses.asdict(plan.config),
                "history": state.history,
                "metrics": state.metrics,
                "best": {"metric": plan.best_metric, "value": state.best},
                **plan.meta,
            }
            if improved:  # best first: a kill between the two writes never leaves last.pth naming a newer best
                save_checkpoint(best_path, saved)
            save_checkpoint(last_path, saved)

    def end_of_epoch() -> dict:
        all_reduce_sum(epoch_sums)
        loss_sum, samples, skipped = epoch_sums.tolist()
        epoch_sums.zero_()
        seconds = time.perf_counter() - epoch_start
        record = {"epoch": state.epoch + 1, "iteration": state.iteration, "lr": epoch_lr,
                  "train_loss": loss_sum / max(samples, 1), "images_per_s": samples / max(seconds, 1e-9),
                  "train_skipped": int(skipped), "epoch_seconds": seconds, "steps": epoch_steps}  # fmt: skip
        if plan.epoch_scheduler is not None:
            plan.epoch_scheduler.step(state.epoch)  # after the epoch, with its index: the official loop's order
        return record

    set_train_mode(train_model)
    while state.iteration < plan.total_steps:
        epoch_ended = False
        for batch in plan.batches(state.epoch, state.epoch_iter):
            with autocast(device, plan.amp):
                result = plan.step(train_model, batch)
            if result.skipped:
                epoch_sums[2] += result.skipped
            if result.loss is None:
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(result.loss).backward()
            if plan.clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(params, plan.clip_grad, mode=plan.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            if plan.iteration_scheduler is not None:
                plan.iteration_scheduler.step()
            if plan.ema is not None:
                state.ema_updates += 1
                plan.ema.update(model, step=state.ema_updates if plan.ema_warmup else None)
            loss = result.loss.detach().double()
            stats = torch.stack([loss * result.samples, torch.ones_like(loss) * result.samples,
                                 (~torch.isfinite(loss)).double()])  # fmt: skip
            window.add_(stats)
            epoch_sums[:2] += stats[:2]
            state.iteration, state.epoch_iter, epoch_steps = state.iteration + 1, state.epoch_iter + 1, epoch_steps + 1
            bar.update(1)
            epoch_ended = state.epoch_iter >= plan.steps_per_epoch
            done = state.iteration >= plan.total_steps
            if state.iteration % plan.log_every == 0 or epoch_ended or done:
                flush_window()
            if epoch_ended or done:
                break
            if plan.eval_unit == "iteration" and plan.eval_every > 0 and state.iteration % plan.eval_every == 0:
                flush_window()
                state.metrics = evaluate()
            if plan.checkpoint_every > 0 and state.iteration % plan.checkpoint_every == 0:
                flush_window()
                checkpoint(False)
        else:  # the loader ran dry before steps_per_epoch batches (unreadable samples): the epoch ends here
            flush_window()
            epoch_ended = True
        done = state.iteration >= plan.total_steps
        record = None
        if epoch_ended:
            record = end_of_epoch()
            state.epoch, state.epoch_iter, epoch_steps = state.epoch + 1, 0, 0
        due = done
        if plan.eval_every > 0 and not due:
            if plan.eval_unit == "epoch":
                due = epoch_ended and state.epoch % plan.eval_every == 0
            else:
                due = state.iteration % plan.eval_every == 0
        improved = False
        if due:
            state.metrics = evaluate()
            value = state.metrics.get(plan.best_metric) if plan.best_metric else None
            if value is not None and (state.best is None or value > state.best):
                state.best, improved = value, True
        if record is not None:
            record.update({k: v for k, v in state.metrics.items() if due})
            state.history.append(record)
            if info.is_main:
                log.write(kind="epoch", **record)
                if plan.describe is not None and plan.eval_unit == "epoch":
                    bar.write(plan.describe(record))
        checkpoint(improved)
        if info.is_main and state.history:
            plot_curves(state.history, out / "curves.png", plan.metric_names, plan.plot_x)
        epoch_lr, epoch_start = optimizer.param_groups[0]["lr"], time.perf_counter()
        barrier()
    bar.close()
    log.close()
    return state


__all__ = ["Plan", "Step", "fit", "autocast", "NonFiniteLossError", "CHECKPOINT_NAME", "BEST_NAME"]
