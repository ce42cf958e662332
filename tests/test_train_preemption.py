"""Preemption: a stop signal at a random step of epoch 2, then resume, ends bit-identical to a straight run (also
with loader workers, a second signal during the save, and from a periodic mid-epoch checkpoint); gradient
accumulation; one run per output folder."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import REPO, TINY, colour_folder

from efficientformer.runtime import loop
from efficientformer.runtime.checkpoint import CheckpointReadError
from efficientformer.runtime.signals import PREEMPTED_EXIT_CODE, Preempted
from efficientformer.train import engine
from efficientformer.train.config import build_config
from efficientformer.utils.io import safe_torch_load

# Every random stream in play: RandAugment and random erasing (per-sample seeds), Mixup/CutMix (numpy, main
# process), drop path (torch), BatchNorm in batch-statistics mode, the EMA, AGC clipping, a per-epoch schedule.
RANDOM = {
    **TINY,
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "reprob": 0.25,
    "hflip": 0.5,
    "mixup": 0.8,
    "cutmix": 1.0,
    "drop_path": 0.1,
    "batch_size": 4,
    "epochs": 3,
    "warmup_epochs": 1,
    "log_every": 1,
    "ema": True,
}
STEPS_PER_EPOCH = 8  # 32 images / batch 4


def _cfg(data, out, **kw):
    return build_config(None, {**RANDOM, "data": str(data), "output": str(out), **kw})


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every preempted one must reproduce."""
    root = tmp_path_factory.mktemp("straight")
    data = colour_folder(root / "data", n_train=16, n_val=4)
    engine.train(_cfg(data, root / "run"))
    return data, safe_torch_load(root / "run" / "last.pth")


def assert_same_run(a: dict, b: dict) -> None:
    """Bitwise: weights and buffers, EMA, optimiser state, scheduler, the per-epoch history (but its timings)."""
    for part in ("model", "model_ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), ("optimizer", i, k)
    assert a["scheduler"] == b["scheduler"] and a["ema_updates"] == b["ema_updates"]
    timing = ("epoch_seconds", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in b["history"]
    ]


def _signal_at(monkeypatch, iteration: int, signum: int, during_save: bool = False) -> None:
    """Deliver a real ``signum`` to this process once the run has done ``iteration`` optimiser steps (and, with
    ``during_save``, again in the middle of every checkpoint write after that)."""
    real_fit, real_save = loop.fit, loop.save_checkpoint
    sent = []

    def fit(plan):
        real_step = plan.task.step
        calls = []

        def step(model, batch):
            calls.append(1)
            if len(calls) == iteration + 1 and not sent:  # the batch after `iteration` steps: mid-step
                sent.append(signum)
                os.kill(os.getpid(), signum)
            return real_step(model, batch)

        plan.task.step = step
        return real_fit(plan)

    def save(path, state):
        if sent and during_save:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while the checkpoint is written
        return real_save(path, state)

    monkeypatch.setattr(engine, "fit", fit)
    monkeypatch.setattr(loop, "save_checkpoint", save)


@pytest.mark.parametrize("signum, workers", [(signal.SIGTERM, 0), (signal.SIGUSR1, 2)], ids=["TERM-w0", "USR1-w2"])
def test_signal_mid_epoch_then_resume_is_bit_identical(straight, tmp_path, monkeypatch, signum, workers):
    data, reference = straight
    out = tmp_path / "run"
    stop_at = random.Random(signum).randrange(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH - 1)  # inside epoch 2
    _signal_at(monkeypatch, stop_at, signum, during_save=signum == signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        engine.train(_cfg(data, out, workers=workers))
    assert stopped.value.code == PREEMPTED_EXIT_CODE and signal.Signals(signum).name in str(stopped.value)
    mid = safe_torch_load(out / "last.pth")["progress"]
    # every rank finishes the step it is in: the signal came during step stop_at + 1
    assert (mid["iteration"], mid["epoch"], mid["epoch_batches"]) == (stop_at + 1, 1, stop_at + 1 - STEPS_PER_EPOCH)
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    if workers == 0:  # another accumulation cannot continue a mid-epoch checkpoint: one line, nothing changed
        with pytest.raises(CheckpointReadError) as refused:
            engine.train(_cfg(data, out, grad_accum=2))
        assert "\n" not in str(refused.value) and "part-way through epoch 2" in str(refused.value)
        assert "resume with grad_accum=1" in str(refused.value)
        assert safe_torch_load(out / "last.pth")["progress"] == mid
    engine.train(_cfg(data, out, workers=workers))  # the same command resumes
    assert_same_run(reference, safe_torch_load(out / "last.pth"))


def test_another_grad_accum_at_an_epoch_end_is_refused_when_the_steps_per_epoch_change(straight, tmp_path):
    """At an epoch end grad_accum may change only with the steps per epoch kept (the run's step counts are in
    optimiser steps): 4 x 2 here would make 4 steps of an epoch of 8."""
    data, reference = straight
    out = tmp_path / "run"
    out.mkdir()
    torch.save(reference, out / "last.pth")
    with pytest.raises(CheckpointReadError) as refused:
        engine.train(_cfg(data, out, grad_accum=2))
    line = str(refused.value)
    assert "\n" not in line and "8 optimiser steps per epoch, now 4" in line and "grad_accum=1" in line


def test_periodic_mid_epoch_checkpoint_resumes_bit_identical(straight, tmp_path, monkeypatch):
    """checkpoint_every=5: resuming from the checkpoint written at step 13 (epoch 2, batch 5) ends as the straight
    run; the checkpoints themselves change nothing."""
    data, reference = straight
    out, snapshot = tmp_path / "run", tmp_path / "snapshot"
    real_save = loop.save_checkpoint

    def save(path, state):
        real_save(path, state)
        if state["progress"]["iteration"] == 10 and path.name == "last.pth":
            shutil.copytree(path.parent, snapshot, ignore=shutil.ignore_patterns(".lock"))

    monkeypatch.setattr(loop, "save_checkpoint", save)
    engine.train(_cfg(data, out, checkpoint_every=5))
    assert_same_run(reference, safe_torch_load(out / "last.pth"))
    assert safe_torch_load(snapshot / "last.pth")["progress"]["epoch_batches"] == 2
    monkeypatch.undo()
    engine.train(_cfg(data, snapshot, checkpoint_every=5))
    assert_same_run(reference, safe_torch_load(snapshot / "last.pth"))


def test_checkpoints_by_minutes_resume_bit_identical(straight, tmp_path, monkeypatch):
    """checkpoint_minutes=1 on a fake clock that advances 20 s at each reading: rank 0's clock writes a mid-epoch
    checkpoint every few steps; resuming from the first one inside epoch 2 ends as the straight run."""
    data, reference = straight
    out, snapshot = tmp_path / "run", tmp_path / "snapshot"
    real_save, saved = loop.save_checkpoint, []

    class Clock:
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            cls.now += 20.0
            return cls.now

        perf_counter = staticmethod(time.perf_counter)

    def save(path, state):
        real_save(path, state)
        progress = state["progress"]
        saved.append((progress["iteration"], progress["epoch_batches"]))
        if progress["epoch"] == 1 and progress["epoch_batches"] and not snapshot.exists():
            shutil.copytree(path.parent, snapshot, ignore=shutil.ignore_patterns(".lock"))

    monkeypatch.setattr(loop, "time", Clock)
    monkeypatch.setattr(loop, "save_checkpoint", save)
    engine.train(_cfg(data, out, checkpoint_minutes=1))
    assert_same_run(reference, safe_torch_load(out / "last.pth"))
    mid_epoch = [s for s in saved if s[1]]
    assert len(mid_epoch) >= 3, saved  # by the clock, not by steps (checkpoint_every is 0)
    resumed_at = safe_torch_load(snapshot / "last.pth")["progress"]
    assert resumed_at["epoch"] == 1 and 0 < resumed_at["epoch_batches"] < STEPS_PER_EPOCH
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    engine.train(_cfg(data, snapshot, checkpoint_minutes=1))
    assert_same_run(reference, safe_torch_load(snapshot / "last.pth"))


def test_submitit_requeues_after_the_mid_epoch_checkpoint_and_resumes_from_it(straight, tmp_path, monkeypatch, capsys):
    """submitit's own protocol, without a cluster: its ``process_job`` (what every task of a job runs) with its
    local job environment, twice, as its controller does when a task exits with the requeue code. The first
    attempt gets submitit's signal (USR2) in epoch 2: the loop checkpoints, and submitit's handler calls
    ``TrainJob.checkpoint()``, dumps the resubmission and requeues; the second attempt resumes from the mid-epoch
    checkpoint (not from the start) and ends as the straight run."""
    submitit = pytest.importorskip("submitit")
    from submitit.core.submission import process_job
    from submitit.core.utils import DelayedSubmission
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    from efficientformer.train.slurm import TrainJob

    data, reference = straight
    out, folder = tmp_path / "run", tmp_path / "submitit"
    folder.mkdir()
    for key, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "0",
        "SUBMITIT_LOCAL_LOCALID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUBMITIT_FOLDER", str(folder))
    paths = submitit.JobEnvironment().paths
    delayed = DelayedSubmission(TrainJob(_cfg(data, out)))
    delayed.set_timeout(60, 3)
    delayed.dump(paths.submitted_pickle)
    usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGCONT, usr)}  # process_job sets them
    stop_at = STEPS_PER_EPOCH + 3
    try:
        with pytest.MonkeyPatch.context() as probe:
            _signal_at(probe, stop_at, usr)
            with pytest.raises(SystemExit) as requeued:
                process_job(folder)
        assert requeued.value.code == LOCAL_REQUEUE_RETURN_CODE  # submitit's "requeue me"
        mid = safe_torch_load(out / "last.pth")["progress"]
        assert (mid["iteration"], mid["epoch"], mid["epoch_batches"]) == (stop_at + 1, 1, 4)
        assert not paths.result_pickle.exists()  # not finished: requeued
        capsys.readouterr()
        process_job(folder)  # the requeued attempt runs the resubmission TrainJob.checkpoint() returned
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    printed = capsys.readouterr().out
    assert (
        f"resuming from {out / 'last.pth'}: iteration {stop_at + 1} of {3 * STEPS_PER_EPOCH}, epoch 1, batch 4"
        in printed
    )
    status, summary = pickle.loads(paths.result_pickle.read_bytes())
    assert status == "success" and summary["epochs"] == 3
    assert_same_run(reference, safe_torch_load(out / "last.pth"))


def test_second_run_into_a_live_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    from efficientformer.runtime.lock import RunFolderLocked, run_folder_lock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom efficientformer.runtime.lock import "
            "acquire\nacquire(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLocked) as refused, run_folder_lock(out):
            pass
        line = str(refused.value)
        assert "\n" not in line and f"PID {holder.pid}" in line and "host " in line and "started 20" in line
        data = colour_folder(tmp_path / "data", n_train=2, n_val=1)
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "efficientformer",
                "train",
                "--data",
                str(data),
                "--output",
                str(out),
                *[f"{k}={v}" for k, v in TINY.items()],
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert res.returncode == 2 and f"PID {holder.pid}" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (out / "config.yaml").exists()  # refused before writing anything
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock; the lock file stays behind
        holder.wait()
    assert (out / ".lock").is_file()
    with run_folder_lock(out), run_folder_lock(out):  # taken over silently; re-entrant within a process
        assert f'"pid": {os.getpid()}' in (out / ".lock").read_text()


TWO_PROCESSES = [f"{k}={v}" for k, v in {**RANDOM, "batch_size": 2, "grad_accum": 2, "log_every": 4}.items()]
PER_EPOCH_2 = 32 // (2 * 2 * 2)  # 4 optimiser steps of 2 processes x 2 batches x 2 images


def _torchrun(data, out, script: list[str], *extra: str, restarts: int = 0) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={restarts}",
        *script,
        "--data",
        str(data),
        "--output",
        str(out),
        *TWO_PROCESSES,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)


def _probe(at_step: int, signal_name: str, rank: int) -> list[str]:
    """The probe signals ``rank`` during the first batch of optimiser step ``at_step + 1`` (it counts batches)."""
    return [
        str(REPO / "tests" / "preempt_probe.py"),
        f"--probe-at={2 * at_step}",
        f"--probe-signal={signal_name}",
        f"--probe-rank={rank}",
    ]


@pytest.fixture(scope="module")
def straight_two(tmp_path_factory):
    """The uninterrupted 2-process run (gloo, gradient accumulation) the 2-process tests must reproduce."""
    root = tmp_path_factory.mktemp("straight2")
    data = colour_folder(root / "data", n_train=16, n_val=4)
    res = _torchrun(data, root / "run", ["-m", "efficientformer", "train"])
    assert res.returncode == 0, res.stderr[-3000:]
    return data, safe_torch_load(root / "run" / "last.pth")


@pytest.mark.slow
def test_two_processes_signal_on_one_rank_then_resume_is_bit_identical(straight_two, tmp_path):
    """2 gloo processes with gradient accumulation; only rank 1 gets SIGUSR1 in epoch 2: both stop after the same
    step (one collective), the mid-epoch checkpoint is written, the workers exit 75, and the same command resumes
    to the result of a straight 2-process run, bit for bit."""
    data, reference = straight_two
    out = tmp_path / "stopped"
    res = _torchrun(data, out, _probe(PER_EPOCH_2 + 1, "SIGUSR1", rank=1))
    assert res.returncode != 0 and "exitcode: 75" in res.stderr, res.stderr[-3000:]
    assert f"stopped by SIGUSR1 after iteration {PER_EPOCH_2 + 2} of {3 * PER_EPOCH_2} (epoch 2, batch 4)" in res.stdout
    res = _torchrun(data, out, ["-m", "efficientformer", "train"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"iteration {PER_EPOCH_2 + 2} of {3 * PER_EPOCH_2}, epoch 1, batch 4" in res.stdout
    assert_same_run(reference, safe_torch_load(out / "last.pth"))


@pytest.mark.slow
def test_torchrun_max_restarts_resumes_by_itself_bit_identical(straight_two, tmp_path):
    """``torchrun --max-restarts=1``: rank 0 (the one holding the folder's lock) gets SIGTERM in epoch 2; both
    workers checkpoint and exit 75, the agent restarts them, and they resume from the mid-epoch checkpoint by
    themselves (the process group in a store scoped to the attempt: runtime.distributed.elastic_attempt_store)
    and end bit-identical to the straight run; torchrun itself exits 0."""
    data, reference = straight_two
    out = tmp_path / "elastic"
    res = _torchrun(data, out, _probe(PER_EPOCH_2 + 1, "SIGTERM", rank=0), restarts=1)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"stopped by SIGTERM after iteration {PER_EPOCH_2 + 2} of {3 * PER_EPOCH_2} (epoch 2, batch 4)" in res.stdout
    assert f"iteration {PER_EPOCH_2 + 2} of {3 * PER_EPOCH_2}, epoch 1, batch 4" in res.stdout  # resumed, not restarted
    assert_same_run(reference, safe_torch_load(out / "last.pth"))


def test_grad_accum_4x8_is_far_closer_to_one_step_of_32_than_one_step_of_8(tmp_path, capsys):
    """One SGD step from the same weights on the same 32 images: 4 accumulated batches of 8 against one batch of 32
    and against one batch of 8. With BatchNorm on batch statistics (S0 in train mode) the three differ, each batch
    of 8 being normalised with its own statistics; with BatchNorm on running statistics (freeze_bn) 4 x 8 equals
    32 to float rounding. The numbers are recorded in docs/training.md."""
    data = colour_folder(tmp_path / "data", n_train=16, n_val=2)
    base = {
        **TINY,
        "no_aug": True,
        "opt": "sgd",
        "lr": 0.1,
        "clip_grad": None,
        "weight_decay": 0.0,
        "ema": False,
        "drop_path": 0.0,
        "max_steps": 1,
        "eval_every": 0,
        "repeated_aug": False,
    }
    start = None
    result = {}
    for freeze in (False, True):
        deltas = {}
        for name, batch, accum in (("32", 32, 1), ("4x8", 8, 4), ("8", 8, 1)):
            out = tmp_path / f"{name}-{freeze}"
            engine.train(
                build_config(
                    None,
                    {
                        **base,
                        "data": str(data),
                        "output": str(out),
                        "batch_size": batch,
                        "grad_accum": accum,
                        "freeze_bn": freeze,
                    },
                )
            )
            ckpt = safe_torch_load(out / "last.pth")
            if start is None:  # the same initial weights in every run (seeded)
                from efficientformer.models import create_model

                torch.manual_seed(0)
                start = create_model(
                    "efficientformerv2_s0", num_classes=2, img_size=32, distillation=False, drop_path_rate=0.0
                ).state_dict()
            deltas[name] = torch.cat(
                [
                    (ckpt["model"][k] - start[k]).flatten()
                    for k in start
                    if start[k].is_floating_point() and "running" not in k
                ]
            )
        ref = deltas["32"].norm()
        result[freeze] = {n: ((deltas[n] - deltas["32"]).norm() / ref).item() for n in ("4x8", "8")}
    with capsys.disabled():
        print(
            f"\nrelative distance of the update to one step of 32: BN batch statistics {result[False]}, "
            f"BN frozen {result[True]}"
        )
    assert result[False]["4x8"] < 0.5 * result[False]["8"]  # far closer, not equal (BatchNorm)
    assert result[True]["4x8"] < 1e-4 < result[True]["8"]
