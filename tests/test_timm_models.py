"""``create_model("timm:NAME")``: timm's models (the search's baselines) train, checkpoint, evaluate and export
through the same code as ours."""

from __future__ import annotations

import pytest
import torch

from efficientformer.models import create_model, load_checkpoint
from efficientformer.models.factory import model_preprocessing

pytest.importorskip("timm")


def test_timm_prefix_builds_timms_model_with_our_arguments():
    model = create_model("timm:mobilenetv2_100", num_classes=10, img_size=64, drop_path_rate=0.1).eval()
    assert type(model).__module__.startswith("timm.") and model.num_classes == 10
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert model_preprocessing(model).img_size == 64 and model.pretrained_cfg["architecture"] == "timm:mobilenetv2_100"
    with pytest.raises(ValueError, match="timm has no model 'mobilenet_v9'"):
        create_model("timm:mobilenet_v9")
    with pytest.raises(ValueError, match="one classifier head"):
        create_model("timm:mobilenetv2_100", distillation=True)
    with pytest.raises(ValueError, match="drop_path_rate must be in"):
        create_model("timm:mobilenetv2_100", drop_path_rate=1.5)


def test_timm_checkpoint_loads_through_create_model_and_load_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = create_model("timm:resnet10t", num_classes=5).eval()
    path = tmp_path / "last.pth"
    torch.save({"model": src.state_dict(), "model_name": "timm:resnet10t"}, path)  # our trainer's layout
    again = create_model("timm:resnet10t", num_classes=5, checkpoint=path).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(src(x), again(x))
    other = create_model("timm:resnet10t", num_classes=7)
    report = load_checkpoint(other, path, strict=False)  # another class count: the head is dropped, said so
    assert report.dropped == ["fc.weight", "fc.bias"] and "dropped 2 keys" in str(report)
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(create_model("timm:resnet10t", num_classes=7), path, strict=True)


@pytest.mark.slow
def test_timm_model_trains_and_evaluates_on_digits(tmp_path):
    """A few steps of the digits recipe with timm's MobileNetV2, then ``efficientformer eval`` of the checkpoint."""
    pytest.importorskip("sklearn")
    from efficientformer.cli import main
    from efficientformer.train.config import build_config
    from efficientformer.train.engine import train
    from efficientformer.train.recipes import DIGITS_RECIPE

    out = tmp_path / "run"
    cfg = build_config(
        None,
        {
            **DIGITS_RECIPE,
            "model": "timm:mobilenetv2_100",
            "epochs": 1,
            "max_steps": 3,
            "output": str(out),
            "cache_dir": str(tmp_path / "cache"),
            "progress": False,
            "workers": 0,
            "drop_path": 0.05,
        },
    )
    summary = train(cfg)
    assert summary["val_top1"] is not None and summary["model"] == "timm:mobilenetv2_100"
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["model_name"] == "timm:mobilenetv2_100" and "classifier.weight" in ckpt["model"]
    model = create_model("timm:mobilenetv2_100", num_classes=10, checkpoint=out / "last.pth").eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    data = tmp_path / "cache"
    folder = next(p.parent for p in data.rglob("val") if p.is_dir())
    rc = main(
        [
            "eval",
            "--model",
            "timm:mobilenetv2_100",
            "--checkpoint",
            str(out / "last.pth"),
            "--data",
            str(folder),
            "--img-size",
            "32",
            "--workers",
            "0",
        ]
    )
    assert rc == 0


def test_export_deploy_of_a_timm_model_skips_the_reparameterisation_with_a_note(tmp_path, capsys):
    """``export --model timm:NAME --deploy``: timm's model has no deploy form; it is exported as it is (parity
    checked) with a one-line note, where deploy() used to fail with a TypeError."""
    from efficientformer.cli import main

    out = tmp_path / "mnv2"
    argv = ["export", "--model", "timm:mobilenetv2_100", "--format", "torchscript", "--img-size", "64"]
    assert main([*argv, "--deploy", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    notes = [line for line in text.splitlines() if "no deploy form" in line]
    assert len(notes) == 1 and "--deploy skipped" in notes[0]
    assert f"wrote {out}.pt" in text and "max |diff| vs PyTorch" in text
    loaded = torch.jit.load(str(out) + ".pt")
    assert loaded(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
