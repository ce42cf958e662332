"""Architecture files, the V2 search space and supernet (exact subnets), analytic parameter counts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from efficientformer.models import create_model
from efficientformer.models.arch import ArchError, arch_to_spec, build_from_arch, load_arch, save_arch, spec_to_arch
from efficientformer.models.efficientformer import V1_VARIANTS
from efficientformer.models.efficientformer_v2 import V2_VARIANTS
from efficientformer.search.params import count_params
from efficientformer.search.space import V2Space, arch_key
from efficientformer.search.supernet import V2Supernet, recalibrate_bn

PUBLISHED = {**V1_VARIANTS, **V2_VARIANTS}
#: True module parameter counts at 224 px with both heads (the official code's, as tests/test_models.py: PARAMS).
PUBLISHED_PARAMS = {
    "efficientformer_l1": 12_289_928,
    "efficientformer_l3": 31_406_000,
    "efficientformer_l7": 82_229_328,
    "efficientformerv2_s0": 3_600_256,
    "efficientformerv2_s1": 6_185_560,
    "efficientformerv2_s2": 12_710_112,
    "efficientformerv2_l": 26_322_288,
}


def _nparams(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_published_models_round_trip_through_arch_files(name, suffix, tmp_path):
    path = save_arch(spec_to_arch(PUBLISHED[name]), tmp_path / f"{name}{suffix}")
    with torch.device("meta"):
        ours = build_from_arch(path)
        ref = create_model(name)
    assert _nparams(ours) == _nparams(ref) == PUBLISHED_PARAMS[name]
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    assert arch_key(arch_to_spec(load_arch(path))) == arch_key(PUBLISHED[name]) or PUBLISHED[name].family == "v1"


def test_published_v2_models_are_points_of_the_space():
    space = V2Space()
    for spec in V2_VARIANTS.values():
        space.check(spec)


def test_arch_outputs_equal_published_model(tmp_path):
    torch.manual_seed(0)
    ref = create_model("efficientformerv2_s0", img_size=64, num_classes=10).eval()
    model = build_from_arch(
        save_arch(V2_VARIANTS["efficientformerv2_s0"], tmp_path / "s0.yaml"), img_size=64, num_classes=10
    )
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.eval()(x), ref(x))


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"format": "x"}, "not an architecture file"),
        ({"widths": [32, 48, 96]}, "'widths' must be a list of 4"),
        ({"depths": [2, 2, 6, 0]}, "positive integers"),
        ({"mlp_ratios": [[4, 4], [4, 4], [4], [4, 4, 4, 4]]}, "must list 6 ratios"),
        ({"attention": [[0], [], [], []]}, "only allowed in stages 3 and 4"),
        ({"attention": [[], [], [9], []]}, "indices must be in 0..5"),
    ],
)
def test_bad_arch_files_give_one_line_errors(edit, message):
    arch = {**spec_to_arch(V2_VARIANTS["efficientformerv2_s0"]), **edit}
    with pytest.raises(ArchError, match=message):
        arch_to_spec(arch)


def test_analytic_params_are_exact():
    rng = random.Random(0)
    space = V2Space()
    specs = list(PUBLISHED.values()) + [space.sample(rng) for _ in range(12)] + [space.smallest(), space.largest()]
    for spec in specs:
        for img, nc, dist in ((224, 1000, True), (64, 10, False), (96, 7, True)):
            if spec.family == "v1" and img != 224 and spec.num_vit == 0:
                continue
            with torch.device("meta"):
                model = build_from_arch(spec, img_size=img, num_classes=nc, distillation=dist)
            assert count_params(spec, img, nc, dist) == _nparams(model), (spec.name, img)


def _randomise(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


@pytest.fixture(scope="module")
def supernet():
    net = V2Supernet(num_classes=10, img_size=64)
    _randomise(net)
    return net.eval()


def test_sliced_subnets_equal_standalone_models(supernet, tmp_path):
    rng = random.Random(3)
    x = torch.randn(2, 3, 64, 64)
    space = supernet.space
    specs = [V2_VARIANTS["efficientformerv2_s0"], V2_VARIANTS["efficientformerv2_s1"], space.smallest()]
    specs += [space.sample(rng) for _ in range(3)]
    for spec in specs:
        supernet.set_subnet(spec)
        sliced = supernet(x)
        # the standalone model is built from the architecture FILE and given the sliced weights
        path = save_arch(spec, tmp_path / "sub.yaml")
        standalone = build_from_arch(path, img_size=64, num_classes=10, distillation=False)
        standalone.load_state_dict(supernet.extract(spec).state_dict())
        assert torch.equal(sliced, standalone.eval()(x)), spec
    supernet.set_subnet(None)
    full = supernet(x)
    supernet.set_subnet(space.largest())
    assert torch.equal(full, supernet(x))
    supernet.set_subnet(None)


def test_subnet_training_updates_only_its_prefix():
    net = V2Supernet(num_classes=10, img_size=64)
    spec = net.space.smallest()
    net.set_subnet(spec)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = net(torch.randn(4, 3, 64, 64))
    out.sum().backward()
    grad = net.stages[0].blocks[0].mlp.fc1.conv.weight.grad
    w0, h0 = spec.widths[0], int(spec.widths[0] * spec.mlp_ratios[0][0])
    assert grad[:h0, :w0].abs().sum() > 0 and grad[h0:].abs().sum() == 0 and grad[:, w0:].abs().sum() == 0
    assert net.stages[0].blocks[1].mlp.fc1.conv.weight.grad is None  # elastic depth: block 1 did not run
    rm = net.stem.conv1.bn.running_mean
    assert not torch.equal(rm[: w0 // 2], before["stem.conv1.bn.running_mean"][: w0 // 2])
    assert torch.equal(rm[w0 // 2 :], before["stem.conv1.bn.running_mean"][w0 // 2 :])


def test_recalibrate_bn_replaces_statistics(supernet):
    spec = V2_VARIANTS["efficientformerv2_s0"]
    model = supernet.extract(spec)
    images = [torch.randn(8, 3, 64, 64) * 2 + 1 for _ in range(3)]
    assert recalibrate_bn(model, images) == 3
    assert not model.training
    mean = model.stem.conv1.bn.running_mean
    # first BN sees conv1(x) of the data: its cumulative mean equals the batch-mean of that conv output
    with torch.no_grad():
        conv = torch.cat([model.stem.conv1.conv(x) for x in images])
    torch.testing.assert_close(mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_space_rejects_points_off_the_grid():
    space = V2Space()
    arch = spec_to_arch(V2_VARIANTS["efficientformerv2_s0"])
    arch["widths"] = [32, 48, 100, 176]
    with pytest.raises(ArchError, match="not on the grid"):
        space.check(arch_to_spec(arch))


TINY = V2Space(
    widths=((16, 24), (32,), (48, 64), (64, 96)), max_depths=(1, 1, 2, 2), min_depths=(1, 1, 1, 1), ratios=(2.0, 4.0)
)


def test_sandwich_model_trains_every_subnet_with_inplace_distillation():
    from efficientformer.search.train import SandwichModel

    torch.manual_seed(0)
    net = V2Supernet(TINY, num_classes=5, img_size=32)
    teacher = build_from_arch(TINY.smallest(), num_classes=5, img_size=32, distillation=False)
    model = SandwichModel(net, num_random=2, teacher=teacher).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    drawn = [model.subnets(0), model.subnets(0), model.subnets(1)]
    assert drawn[0] == drawn[1] and drawn[0] != drawn[2]  # subnets are a function of (seed, step): same on every rank
    loss = model(torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,)))
    loss.backward()
    opt.step()
    assert set(model.last_losses) == {"largest", "smallest", "random0", "random1"}
    assert all(v > 0 for v in model.last_losses.values())
    assert loss.item() == pytest.approx(sum(v.item() for v in model.last_losses.values()), rel=1e-6)
    assert net.active is None and int(model.steps) == 1  # the full network is active again; the step counted
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("stages.3.blocks.1.attn") for k in changed)  # the largest subnet trained
    assert not teacher.training


def _noise_folder(root):
    """train/ (12 images per class) and val/ (4) of two classes of random 32 px images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_supernet_trains_on_the_runtime_and_resumes_exactly(tmp_path):
    """``search supernet`` is a plan for the training runtime: checkpoints, and 2 steps + resume to 4 equal 4
    straight steps bit for bit (the random subnets are drawn from (seed, step))."""
    from efficientformer.search.train import SupernetConfig, train_supernet

    root = _noise_folder(tmp_path / "data")
    common = dict(data=str(root), img_size=32, batch_size=8, threads=1, progress=False, eval_images=8)
    straight, _ = train_supernet(SupernetConfig(output=str(tmp_path / "a"), steps=4, **common), TINY, root)
    train_supernet(SupernetConfig(output=str(tmp_path / "b"), steps=2, **common), TINY, root)
    resumed, metrics = train_supernet(SupernetConfig(output=str(tmp_path / "b"), steps=4, **common), TINY, root)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert {"val_top1", "val_top1_smallest"} <= set(metrics)
    ckpt = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert ckpt["task"] == "search-supernet" and int(ckpt["model"]["steps"]) == 4


def test_sigterm_stops_search_supernet_at_a_checkpoint_and_the_same_command_resumes_exactly(tmp_path, monkeypatch):
    """``search supernet --stop-signals ... --checkpoint-every ...``: SIGTERM in the middle of epoch 2 finishes the
    step, writes a mid-epoch checkpoint and exits 75; the same command ends bit-identical to a straight run."""
    import os
    import signal

    import yaml

    import efficientformer.search.train as search_train
    from efficientformer.cli import main
    from efficientformer.runtime.signals import PREEMPTED_EXIT_CODE, Preempted
    from efficientformer.search.supernet import load_supernet

    root = _noise_folder(tmp_path / "data")
    config = tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump({"space": TINY.to_dict()}))

    def command(out):  # 24 images, batch 8: 3 steps per epoch, 6 steps in all
        flags = ["--config", str(config), "--data", str(root), "--steps", "6", "--batch-size", "8"]
        flags += ["--stop-signals", "SIGTERM,SIGUSR2", "--checkpoint-every", "2", "--checkpoint-minutes", "30"]
        return ["search", "supernet", *flags, "--output", str(out), "progress=false", "eval_images=0"]

    assert main(command(tmp_path / "straight")) == 0
    real_fit = search_train.fit

    def fit(plan):  # a real SIGTERM to this process during the fifth step (the second of epoch 2)
        real_step, calls = plan.task.step, []

        def step(model, batch):
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_step(model, batch)

        plan.task.step = step
        return real_fit(plan)

    out = tmp_path / "run"
    monkeypatch.setattr(search_train, "fit", fit)
    with pytest.raises(Preempted) as stopped:
        main(command(out))
    assert stopped.value.code == PREEMPTED_EXIT_CODE and "SIGTERM" in str(stopped.value)
    mid = torch.load(out / "last.pth", weights_only=True)
    assert (mid["progress"]["iteration"], mid["progress"]["epoch"]) == (5, 1) and not (out / "supernet.pth").exists()
    recorded = mid["config"]
    assert tuple(recorded["stop_signals"]) == ("SIGTERM", "SIGUSR2")
    assert (recorded["checkpoint_every"], recorded["checkpoint_minutes"]) == (2, 30.0)
    monkeypatch.undo()
    assert main(command(out)) == 0  # the same command resumes
    straight = load_supernet(tmp_path / "straight" / "supernet.pth").state_dict()
    resumed = load_supernet(out / "supernet.pth").state_dict()
    assert straight.keys() == resumed.keys() and all(torch.equal(v, resumed[k]) for k, v in straight.items())


def test_subnet_evaluator_equals_extract_then_recalibrate(supernet):
    from efficientformer.search.train import SubnetEvaluator, normalise

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 64, 64), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (48,), generator=gen)
    calib = torch.randint(0, 256, (40, 3, 64, 64), generator=gen, dtype=torch.uint8)
    state = {k: v.clone() for k, v in supernet.state_dict().items()}
    spec = V2_VARIANTS["efficientformerv2_s0"]
    acc = SubnetEvaluator(supernet, images, labels, calib, calib_batch=16)(spec)
    assert all(torch.equal(v, state[k]) for k, v in supernet.state_dict().items())  # scoring leaves it untouched
    model = supernet.extract(spec)
    recalibrate_bn(model, [normalise(calib[i : i + 16]) for i in range(0, 40, 16)])
    with torch.no_grad():
        ref = 100.0 * (model(normalise(images)).argmax(-1) == labels).float().mean().item()
    assert acc == pytest.approx(ref)


def test_show_command_and_one_line_errors(tmp_path, capsys):
    import json

    from efficientformer.cli import main

    path = save_arch(V2_VARIANTS["efficientformerv2_s1"], tmp_path / "s1.yaml")
    assert main(["search", "show", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == PUBLISHED_PARAMS["efficientformerv2_s1"] and info["depths"] == [3, 3, 9, 6]
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: efficientformer-arch\nfamily: v3\n")
    assert main(["search", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'family' must be 'v1' or 'v2'" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "search",
                "run",
                "--supernet",
                str(tmp_path / "none.pth"),
                "--lut",
                str(path),
                "--output",
                str(tmp_path / "o"),
                "--target-latency",
                "1",
            ]
        )
        == 2
    )
    assert "supernet checkpoint not found" in capsys.readouterr().err


def test_searched_architectures_deploy_exactly():
    from efficientformer.deploy.fuse import deploy
    from efficientformer.models.base import ModelSpec

    rng = random.Random(7)
    specs = [V2Space().sample(rng), ModelSpec("v1_searched", "v1", (32, 64, 144, 272), (1, 2, 3, 2), num_vit=1)]
    x = torch.randn(2, 3, 64, 64)
    for spec in specs:
        torch.manual_seed(0)
        model = build_from_arch(spec, img_size=64, num_classes=10).eval()
        _randomise(model)
        with torch.no_grad():
            torch.testing.assert_close(deploy(model)(x), model(x), rtol=1e-4, atol=1e-4)
