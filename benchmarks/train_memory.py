"""Training memory with and without gradient checkpointing, and the time a mid-epoch checkpoint takes (issue #20).

Each (model, checkpointing) pair runs in its own process, so the peak resident set (``ru_maxrss``) is that
configuration's alone: the figure reported is the peak during one forward + backward of a training batch at 224 px
minus the resident set before it (model, optimiser, input already allocated), i.e. activations and gradients.
Then the full training checkpoint the loop writes mid-epoch (model, EMA, AdamW state after one step, scheduler,
RNG) is written atomically three times; the median time and the file size are reported.

    python benchmarks/train_memory.py --models efficientformer_l1,efficientformerv2_l --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(model_name: str, checkpointing: bool, batch: int, size: int, threads: int) -> dict:
    import torch

    from efficientformer.models import create_model
    from efficientformer.runtime.checkpoint import gather_rng_states, save_checkpoint
    from efficientformer.runtime.optim import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=1000, img_size=size, distillation=False).train()
    model.set_grad_checkpointing(checkpointing)
    optimizer = build_optimizer(model, "adamw", 1e-3, 0.025)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    step_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    optimizer.step()
    ema = copy.deepcopy(model)
    state = {
        "model": model.state_dict(),
        "model_ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": {"iteration": 1, "epoch": 0, "epoch_batches": 1},
        "rng": gather_rng_states(),
    }
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pth"
        for _ in range(3):
            t0 = time.perf_counter()
            save_checkpoint(path, state)
            times.append(time.perf_counter() - t0)
        size_mb = path.stat().st_size / 2**20
    return {
        "model": model_name,
        "grad_checkpointing": checkpointing,
        "batch": batch,
        "img_size": size,
        "forward_backward_peak_mib": round((peak - before) / 1024, 1),
        "forward_backward_s": round(step_s, 2),
        "checkpoint_write_s": round(statistics.median(times), 3),
        "checkpoint_mib": round(size_mb, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientformer_l1,efficientformerv2_l")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        row = measure(args.one[0], args.one[1] == "1", args.batch, args.img_size, args.threads)
        print(json.dumps(row))
        return
    rows = []
    for name in args.models.split(","):
        for checkpointing in ("0", "1"):
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    checkpointing,
                    "--batch",
                    str(args.batch),
                    "--img-size",
                    str(args.img_size),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average {os.getloadavg()}, {platform.processor() or platform.machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
