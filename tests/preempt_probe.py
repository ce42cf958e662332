"""Run under torchrun by test_train_preemption.py: ``efficientformer train`` with the CLI's arguments, where rank
``--probe-rank`` sends itself ``--probe-signal`` while it computes batch ``--probe-at`` + 1 (batches, not optimiser
steps), but only in the first attempt (``TORCHELASTIC_RESTART_COUNT`` 0): the other ranks learn of it through the
loop's one collective. Under ``torchrun --max-restarts`` the agent then restarts the workers, which resume from the
newest checkpoint."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from efficientformer.cli import main
from efficientformer.train import engine


def install(signal_at: int, signum: int, rank: int) -> None:
    real_fit = engine.fit

    def fit(plan):
        real_step, calls = plan.task.step, []

        def step(model, batch):
            calls.append(1)
            if len(calls) == signal_at + 1 and plan.info.rank == rank:
                os.kill(os.getpid(), signum)
            return real_step(model, batch)

        plan.task.step = step
        return real_fit(plan)

    engine.fit = fit


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--probe-at", type=int, required=True)
    p.add_argument("--probe-signal", default="SIGUSR1")
    p.add_argument("--probe-rank", type=int, default=1)
    args, rest = p.parse_known_args()
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        install(args.probe_at, getattr(signal, args.probe_signal), args.probe_rank)
    sys.exit(main(["train", *rest]))
