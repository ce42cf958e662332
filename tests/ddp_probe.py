"""Run under torchrun by test_train_distributed.py: trains through the CLI code path, then compares every rank's
EMA weights and buffers with rank 0's and writes the largest difference to <output>/ema_ranks.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from timm.utils.model_ema import ModelEmaV3

from efficientformer.cli import build_parser
from efficientformer.cli.train import config_from_args
from efficientformer.train import engine

EMAS: list[ModelEmaV3] = []


class RecordedEma(ModelEmaV3):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        EMAS.append(self)


def main() -> None:
    dist.init_process_group("gloo")  # our own group: train() reuses it and leaves it alive
    engine.ModelEmaV3 = RecordedEma
    cfg = config_from_args(build_parser().parse_args(["train", *sys.argv[1:]]))
    engine.train(cfg)
    state = {k: v.double() for k, v in EMAS[0].module.state_dict().items() if v.is_floating_point()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    if dist.get_rank() == 0:
        worst = max(
            (gathered[r][k] - gathered[0][k]).abs().max().item() for r in range(1, len(gathered)) for k in state
        )
        differing = sum(not torch.equal(gathered[r][k], gathered[0][k]) for r in range(1, len(gathered)) for k in state)
        (Path(cfg.output) / "ema_ranks.json").write_text(json.dumps({"max_diff": worst, "differing": differing}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
