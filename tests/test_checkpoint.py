"""Checkpoint containers, file formats, head handling and clear errors."""

import argparse
import re

import pytest
import torch
from reference_layouts import official_from_timm, randomize_
from safetensors.torch import save_file

from efficientformer import CheckpointError, create_model, load_checkpoint
from efficientformer.models import VARIANTS


@pytest.fixture(scope="module")
def s0_state():
    return randomize_(create_model("efficientformerv2_s0")).state_dict()


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_official_training_checkpoint_with_args(tmp_path, s0_state):
    import timm

    ref = randomize_(timm.create_model("efficientformerv2_s0")).eval()
    official = official_from_timm(ref.state_dict(), VARIANTS["efficientformerv2_s0"])
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": official, "model_ema": official, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, path)
    model = create_model("efficientformerv2_s0")
    report = load_checkpoint(model, path)
    assert report.layout == "official" and report.container == "model"
    assert load_checkpoint(model, path, use_ema=True).container == "model_ema"
    x = torch.randn(1, 3, 224, 224)  # timm's V2 runs only at the size it was built for
    assert torch.allclose(_out(model, x), _out(ref, x), rtol=1e-5, atol=1e-6)


def test_safetensors_state_dict_and_module_prefix(tmp_path, s0_state):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in s0_state.items()}, str(path))
    model = create_model("efficientformerv2_s0")
    assert load_checkpoint(model, path).layout == "efficientformer"
    load_checkpoint(model, {"state_dict": {f"module.{k}": v for k, v in s0_state.items()}})
    assert torch.equal(model.state_dict()["head.weight"], s0_state["head.weight"])


def test_two_heads_into_one_and_back(s0_state):
    x = torch.randn(2, 3, 64, 64)
    two = create_model("efficientformerv2_s0")
    load_checkpoint(two, s0_state)
    one = create_model("efficientformerv2_s0", distillation=False)
    report = load_checkpoint(one, s0_state)
    assert any("merged" in n for n in report.notes)
    assert torch.allclose(_out(one, x), _out(two, x), rtol=1e-5, atol=1e-6)
    again = create_model("efficientformerv2_s0")
    report = load_checkpoint(again, one.state_dict())
    assert any("copied" in n for n in report.notes)
    assert torch.allclose(_out(again, x), _out(one, x), rtol=1e-5, atol=1e-6)


def test_other_class_count(s0_state):
    model = create_model("efficientformerv2_s0", num_classes=10)
    with pytest.raises(CheckpointError, match="1000 classes, the model 10; to fine-tune new heads from it"):
        load_checkpoint(model, s0_state)
    report = load_checkpoint(model, s0_state, strict=False)
    assert "head.weight" in report.dropped and "head.weight" in report.missing


def test_features_only_drops_head(s0_state):
    report = load_checkpoint(create_model("efficientformerv2_s0", features_only=True), s0_state)
    assert "head.weight" in report.dropped and not report.missing


def test_wrong_variant_is_named(s0_state):
    with pytest.raises(
        CheckpointError, match="this checkpoint is efficientformerv2_s0, the model is efficientformerv2_s1"
    ):
        load_checkpoint(create_model("efficientformerv2_s1"), s0_state)


def test_shape_mismatch_lists_keys(s0_state):
    bad = dict(s0_state)
    bad["stages.0.blocks.0.mlp.fc1.conv.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"shape mismatch in 1 keys: stages\.0\.blocks\.0\.mlp\.fc1\.conv\.bias"):
        load_checkpoint(create_model("efficientformerv2_s0"), bad)


def test_files_that_are_not_checkpoints(tmp_path):
    model = create_model("efficientformerv2_s0")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, junk)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(model, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="does not look like an EfficientFormer"):
        load_checkpoint(model, {"fc.weight": torch.zeros(2, 2)})


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(create_model("efficientformerv2_s0"), path)
    assert not marker.exists()


def test_legacy_non_zip_pickle_with_a_payload_gets_a_readable_refusal(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "legacy_evil.pth"
    payload = {"model": {"x": torch.zeros(1)}, "payload": _Payload(str(marker))}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(create_model("efficientformerv2_s0"), path)
    text = str(info.value)
    expected = rf"refusing to unpickle {re.escape(str(path))}: it references [\w.]*open, which could run code"
    assert re.match(expected, text)
    assert "\n" not in text and "\x1b" not in text and "Weights only load failed" not in text
    assert not marker.exists()


def test_harmless_legacy_checkpoint_with_argparse_args_loads(tmp_path, s0_state):
    import argparse

    path = tmp_path / "legacy_args.pth"
    torch.save({"model": s0_state, "args": argparse.Namespace(lr=1e-3)}, path, _use_new_zipfile_serialization=False)
    model = create_model("efficientformerv2_s0")
    report = load_checkpoint(model, path)
    assert report.container == "model" and not report.missing
    torch.testing.assert_close(model.state_dict()["head.weight"], s0_state["head.weight"])


def test_non_finite_weights_are_refused(s0_state):
    bad = dict(s0_state)
    bad["head.bias"] = bad["head.bias"].clone()
    bad["head.bias"][3] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensor\(s\) \(head\.bias\)"):
        load_checkpoint(create_model("efficientformerv2_s0"), bad)


def test_messages_give_cli_advice_not_python_calls(s0_state):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(create_model("efficientformerv2_s1"), s0_state)
    assert "--model efficientformerv2_s0" in str(info.value) and "create_model(" not in str(info.value)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(create_model("efficientformerv2_s0", num_classes=10), s0_state)
    assert "strict=False" not in str(info.value)


def test_float_weights_stored_as_integers_are_refused(tmp_path, s0_state):
    """int64 tensors of the right shapes load without complaint in PyTorch and evaluate to NaN; refuse them."""
    ints = {k: (v.round().to(torch.int64) if v.is_floating_point() else v) for k, v in s0_state.items()}
    path = tmp_path / "ints.safetensors"
    save_file(ints, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(create_model("efficientformerv2_s0"), path)
    msg = str(info.value)
    assert "floating-point parameter(s) as int64" in msg and "re-save" in msg and "\n" not in msg
    one = dict(s0_state, **{"head.weight": s0_state["head.weight"].to(torch.int32)})  # one bad tensor is enough
    with pytest.raises(CheckpointError, match=r"1 floating-point parameter\(s\) as int32 \(head.weight\)"):
        load_checkpoint(create_model("efficientformerv2_s0"), one)
