"""End to end on a tiny proxy folder: latency table -> supernet -> greedy search -> architecture file -> training.

``efficientformer train --model arch.yaml`` builds the searched network through ``create_model``, which reads
architecture files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import efficientformer.models as models_pkg
from efficientformer.cli import main
from efficientformer.data.proxy import _photos, render
from efficientformer.models.arch import build_from_arch, load_arch
from efficientformer.search.latency import LatencyTable
from efficientformer.search.space import V2Space

TINY_SPACE = {
    "widths": [[16, 24], [32, 40], [48, 64], [64, 96]],
    "max_depths": [1, 2, 2, 2],
    "min_depths": [1, 1, 1, 1],
    "ratios": [2, 4],
}


def _tiny_proxy(root, per_class: dict[str, int]) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    photos = _photos()
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for cls in range(4):
            folder = root / split / str(cls)
            folder.mkdir(parents=True)
            idx = np.flatnonzero(digits.target == cls)[: n if split == "train" else 40]
            for k, i in enumerate(idx[:n]):
                Image.fromarray(render(digits.images[i], photos, rng, 32)).save(folder / f"{k}.png")


@pytest.mark.slow
def test_search_produces_an_architecture_that_trains(tmp_path, monkeypatch, capsys):
    data = tmp_path / "proxy"
    _tiny_proxy(data, {"train": 24, "search": 6, "val": 6})
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump({"space": TINY_SPACE}))
    lut = tmp_path / "lut.json"
    assert (
        main(
            [
                "search",
                "lut",
                "--family",
                "v2",
                "--runtime",
                "torch",
                "--img-size",
                "64",
                "--runs",
                "2",
                "--warmup",
                "1",
                "--space",
                str(cfg),
                "--output",
                str(lut),
            ]
        )
        == 0
    )
    table = LatencyTable.load(lut)
    space = V2Space.from_dict(TINY_SPACE)
    target = (table.predict(space.largest()) + table.predict(space.smallest())) / 2
    assert (
        main(
            [
                "search",
                "supernet",
                "--config",
                str(cfg),
                "--data",
                str(data),
                "--img-size",
                "32",
                "--steps",
                "3",
                "--batch-size",
                "16",
                "--output",
                str(tmp_path / "sn"),
            ]
        )
        == 0
    )
    out = tmp_path / "search"
    assert (
        main(
            [
                "search",
                "run",
                "--supernet",
                str(tmp_path / "sn" / "supernet.pth"),
                "--lut",
                str(lut),
                "--data",
                str(data),
                "--target-latency",
                str(target),
                "--actions-per-step",
                "2",
                "--calib-images",
                "32",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    arch = load_arch(out / "arch.yaml")
    assert arch["search"]["table_latency_ms"] <= target
    assert (out / "trajectory.png").is_file() and (out / "summary.json").is_file()
    rows = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
    assert rows[1]["action"] == "start" and rows[-1]["latency_ms"] <= target

    run = tmp_path / "train"
    rc = main(
        [
            "train",
            "--model",
            str(out / "arch.yaml"),
            "--data",
            str(data),
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--threads",
            "1",
            "--warmup-epochs",
            "0",
            "--mixup",
            "0",
            "--cutmix",
            "0",
            "--auto-augment",
            "none",
            "--reprob",
            "0",
            "--no-repeated-aug",
            "--output",
            str(run),
            "--distillation",
            "none",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and (run / "last.pth").is_file()  # create_model read the architecture file
    model = models_pkg.create_model(
        str(out / "arch.yaml"), num_classes=summary_classes(run), img_size=32, checkpoint=str(run / "last.pth")
    )
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel()
        for p in build_from_arch(out / "arch.yaml", num_classes=summary_classes(run), img_size=32).parameters()
    )


def summary_classes(run) -> int:
    return len(torch.load(run / "last.pth", weights_only=True)["class_names"])
