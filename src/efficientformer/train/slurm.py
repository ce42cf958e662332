"""Slurm through submitit: one task per GPU, requeue on preemption or timeout, automatic resume from last.pth.

submitit's own signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise) joins the run's stop signals: the
loop finishes the step, writes a mid-epoch checkpoint and raises ``Preempted``; then submitit's handler for that
signal (restored by then) requeues the job, which resumes from the checkpoint: no work is lost."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

from ..runtime.signals import Preempted
from .config import TrainConfig
from .engine import train


class TrainJob:
    """A picklable callable submitit runs on every task. ``checkpoint()`` is submitit's preemption hook: it
    requeues the same job, which resumes from ``<output>/last.pth``, written mid-epoch when the run stopped."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # torch.distributed reads these; a single task runs without a process group
            first = env.hostnames[0] if env.hostnames else "127.0.0.1"
            os.environ.setdefault("MASTER_ADDR", first)
            os.environ.setdefault("MASTER_PORT", str(29500 + int(str(env.job_id).split("_")[0]) % 1000))
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(env.global_rank), str(env.num_tasks)
            os.environ["LOCAL_RANK"] = str(env.local_rank)
        usr = "SIG" + submitit.JobEnvironment.USR_SIG
        signals = tuple(dict.fromkeys((*self.cfg.stop_signals, usr)))
        try:
            return train(replace(self.cfg, resume=True, progress=False, stop_signals=signals))
        except Preempted as stopped:
            requeue = signal.getsignal(getattr(signal, usr))  # submitit's handler, back in place after the run
            if callable(requeue):
                requeue(stopped.signum, None)  # rank 0: checkpoint() + requeue + exit; other ranks return
            raise

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg))


def submit(
    cfg: TrainConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    cpus_per_task: int = 10,
    partition: str | None = None,
    timeout_min: int = 4320,
    job_dir: str | None = None,
    local: bool = False,
    wait: bool = False,
):
    """Submit ``cfg`` (its ``output`` must be set, so that a requeued job finds its checkpoint).
    Returns ``(job, summary or None)``."""
    try:
        import submitit
    except ImportError:
        raise ImportError("Slurm submission needs submitit: pip install submitit") from None
    if not cfg.output:
        raise ValueError("--output is required for submitted runs: the requeued job resumes from <output>/last.pth")
    folder = Path(job_dir or Path(cfg.output) / "submitit") / "%j"
    if local:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min)
    else:
        executor = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=30)
        params = dict(
            nodes=nodes,
            tasks_per_node=gpus_per_node,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            timeout_min=timeout_min,
            name=f"efficientformer-{cfg.model}",
        )
        if partition:
            params["slurm_partition"] = partition
        executor.update_parameters(**params)
    job = executor.submit(TrainJob(cfg))
    return job, (job.result() if wait else None)
