"""V1: the MetaPath supernet with Gumbel-softmax path weights, and latency-driven slimming."""

from __future__ import annotations

import pytest
import torch

from efficientformer.models.arch import build_from_arch
from efficientformer.search.latency import network_keys
from efficientformer.search.v1 import (
    IDENTITY,
    MB3D,
    V1MetaSupernet,
    V1Path,
    V1PathEvaluator,
    canonical,
    random_importance,
    slim,
    train_v1_supernet,
)
from efficientformer.search.v1space import V1Space

TINY = V1Space(max_widths=(32, 48, 64, 128), min_widths=(16, 16, 32, 64), max_depths=(2, 2, 3, 3), max_vit=2)


def synthetic_latency(spec) -> float:
    total = 0.0
    for key in network_keys(spec):
        kind, *parts = key.split("/")
        p = {x[0]: int(x[1:]) for x in parts}
        total += {
            "mb4d": lambda: p["w"] ** 2 * 1e-3 / p["s"],
            "mb3d": lambda: p["w"] * 0.05,
            "down": lambda: p["i"] * p["o"] * 1e-5,
        }.get(kind, lambda: p.get("w", 0) * 1e-3)()
    return total


def test_slimming_stops_at_the_latency_target():
    start = V1Path([["mb4d"] * 2, ["mb4d"] * 2, ["mb4d"] * 3, ["mb4d", "mb3d", "mb3d"]], list(TINY.max_widths))
    target = 0.4 * synthetic_latency(start.spec())

    def accuracy(path: V1Path) -> float:  # wider and deeper is better; stage 4 width matters most
        spec = path.spec()
        return 50 + 0.02 * sum(spec.widths) + 0.1 * spec.widths[3] / 16 + sum(spec.depths)

    result = slim(start, random_importance(0), accuracy, synthetic_latency, target, TINY)
    lats = [row["latency_ms"] for row in result.trajectory]
    assert result.latency_ms <= target < lats[-2]  # stops at the first point under the target
    assert all(b < a for a, b in zip(lats, lats[1:]))
    final = result.final.spec()
    assert final.num_vit >= 1 and all(d >= 1 for d in final.depths)
    assert all(lo <= w <= hi for w, lo, hi in zip(final.widths, TINY.min_widths, TINY.max_widths))
    actions = {row["action"][:3] for row in result.trajectory[1:]}
    assert actions <= {"(a)", "(b)", "(c)"} and len(actions) >= 2


def test_canonical_paths_keep_mb3d_at_the_end():
    p = canonical(
        V1Path([["id", "id"], ["mb4d", "id"], ["id", "mb4d", "id"], ["mb3d", "mb4d", "id"]], [32, 48, 64, 128])
    )
    assert p.choices[0] == ["mb4d", "id"]  # a stage never goes empty
    assert p.choices[3] == [MB3D, MB3D, IDENTITY]
    assert p.spec().depths == (1, 1, 1, 2) and p.spec().num_vit == 2


def test_metapath_supernet_trains_and_its_result_builds(tmp_path):
    torch.manual_seed(0)
    net = V1MetaSupernet(TINY, num_classes=4, img_size=32)
    images = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 4, (64,))
    before = [a.detach().clone() for a in net.alphas]
    done = train_v1_supernet(net, images, labels, output=tmp_path / "sn", steps=3, batch_size=16, progress=False)
    assert done["steps"] == 3 and done["tau"] < 5.0 and (tmp_path / "sn" / "last.pth").is_file()  # the runtime's
    assert any(not torch.equal(a, b) for a, b in zip(net.alphas, before))  # architecture weights learn
    path = net.argmax_path()
    path.widths = [16, 32, 48, 96]  # narrowed stages run on sliced weights
    evaluator = V1PathEvaluator(net, images[:32], labels[:32], images[32:])
    acc = evaluator(path)
    assert 0.0 <= acc <= 100.0
    result = slim(
        net.argmax_path(),
        net.importance,
        evaluator,
        synthetic_latency,
        0.7 * synthetic_latency(net.argmax_path().spec()),
        TINY,
    )
    model = build_from_arch(result.final.spec(), img_size=32, num_classes=4).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_v1_command_writes_an_architecture_within_target(tmp_path):
    import yaml
    from test_search_e2e import _tiny_proxy

    from efficientformer.cli import main
    from efficientformer.models.arch import load_arch
    from efficientformer.search.latency import v1_space_keys

    data = tmp_path / "proxy"
    _tiny_proxy(data, {"train": 24, "search": 6, "val": 6})
    space = {"max_widths": [32, 48, 64, 128], "min_widths": [16, 16, 32, 64], "max_depths": [2, 2, 3, 3], "max_vit": 2}
    cfg = tmp_path / "v1.yaml"
    cfg.write_text(yaml.safe_dump({"space": space, "train": {"tau_start": 3.0, "tau_end": 1.0}}))
    csv = tmp_path / "lut.csv"
    keys = v1_space_keys(V1Space.from_dict(space))
    csv.write_text("# family: v1\nkey,ms\n" + "".join(f"{k},{_synthetic_entry(k)}\n" for k in keys))
    start = V1Path([["mb4d"] * 2, ["mb4d"] * 2, ["mb4d"] * 3, ["mb4d", "mb3d", "mb3d"]], [32, 48, 64, 128])
    target = 0.6 * synthetic_latency(start.spec())
    out = tmp_path / "v1"
    assert (
        main(
            [
                "search",
                "v1",
                "--lut",
                str(csv),
                "--config",
                str(cfg),
                "--data",
                str(data),
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--target-latency",
                str(target),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    arch = load_arch(out / "arch.yaml")
    assert arch["family"] == "v1" and arch["search"]["table_latency_ms"] <= target
    model = build_from_arch(out / "arch.yaml", img_size=32, num_classes=4).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def _synthetic_entry(key: str) -> float:
    kind, *parts = key.split("/")
    p = {x[0]: int(x[1:]) for x in parts}
    return {
        "mb4d": lambda: p["w"] ** 2 * 1e-3 / p["s"],
        "mb3d": lambda: p["w"] * 0.05,
        "down": lambda: p["i"] * p["o"] * 1e-5,
    }.get(kind, lambda: p.get("w", 0) * 1e-3)()
