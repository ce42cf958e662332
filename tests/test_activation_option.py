"""The activation option (GELU as published, ReLU / Hardswish for INT8): build, weights, checkpoints, deploy, INT8."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from efficientformer.deploy import deploy
from efficientformer.deploy.fuse import load_deployed, save_deployed
from efficientformer.models import VARIANTS, create_model, list_models, load_checkpoint, resolve_name
from efficientformer.models.arch import load_arch, save_arch, spec_to_arch
from efficientformer.models.checkpoint import CheckpointError
from efficientformer.models.layers import ACTIVATIONS
from efficientformer.models.registry import get_spec, split_activation, with_activation

SWAPPED = ("relu", "hardswish")


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and layer scales, so a wrong activation or fold changes the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    for name, p in model.named_parameters():
        if name.endswith(".scale"):
            p.data.fill_(0.5)
    return model.eval()


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(type(m) is kind for m in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_every_variant_builds_with_every_activation(name):
    with torch.device("meta"):  # structure only: no weights initialised
        gelus = count(create_model(name, img_size=64), nn.GELU)
    assert gelus > 0
    for act in SWAPPED:
        with torch.device("meta"):
            model = create_model(name, img_size=64, act=act)
        assert model.name == f"{name}_{act}" and model.spec.act == act
        assert count(model, nn.GELU) == 0
        # every GELU replaced, nothing else: V1's ReLU stem stays (2 ReLUs on top for V1)
        stem_relus = 2 if VARIANTS[name].family == "v1" else 0
        assert count(model, ACTIVATIONS[act]) == gelus + (stem_relus if act == "relu" else 0)


@pytest.mark.parametrize("name", ["efficientformerv2_s0", "efficientformer_l1"])
def test_default_is_unchanged_and_swapped_model_takes_gelu_weights(name):
    gelu = randomise(create_model(name, img_size=32, num_classes=10))
    assert gelu.spec is VARIANTS[name] and gelu.name == name
    assert create_model(name, act="gelu").spec is VARIANTS[name]
    x = torch.randn(2, 3, 32, 32)
    outs = {}
    for act in SWAPPED:
        swapped = create_model(f"{name}_{act}", img_size=32, num_classes=10)
        assert list(swapped.state_dict()) == list(gelu.state_dict())  # same keys, same order
        report = load_checkpoint(swapped, gelu.state_dict(), strict=True)  # weights alone: no activation recorded
        assert not report.missing and not report.unexpected
        with torch.no_grad():
            outs[act] = swapped.eval()(x)
    with torch.no_grad():
        ref = gelu(x)
    assert not torch.allclose(outs["relu"], ref, atol=1e-4) and not torch.allclose(outs["hardswish"], ref, atol=1e-4)


def test_names_kwarg_and_errors():
    assert resolve_name("efficientformerv2_s0_relu") == ("efficientformerv2_s0_relu", None)
    assert split_activation("efficientformer_l1_hardswish") == ("efficientformer_l1", "hardswish")
    assert split_activation("efficientformer_l1") == ("efficientformer_l1", "gelu")
    assert get_spec("efficientformer_l1_relu") == with_activation(VARIANTS["efficientformer_l1"], "relu")
    assert create_model("efficientformerv2_s0", act="relu", img_size=32).spec == get_spec("efficientformerv2_s0_relu")
    assert "_relu" not in " ".join(list_models())  # the published list stays the published seven
    with pytest.raises(ValueError, match="act must be one of gelu, relu, hardswish"):
        create_model("efficientformerv2_s0", act="swish")
    with pytest.raises(ValueError, match="already uses relu"):
        create_model("efficientformerv2_s0_relu", act="hardswish")
    with pytest.raises(ValueError, match="no published weights"):
        create_model("efficientformerv2_s0_relu", pretrained=True)
    with pytest.raises(ValueError, match="no published weights"):
        resolve_name("efficientformerv2_s0_relu.snap_dist_in1k")


def test_activation_survives_checkpoint_arch_and_deploy_round_trips(tmp_path):
    relu = randomise(create_model("efficientformerv2_s0_relu", img_size=32, num_classes=10))
    # a training checkpoint of ours records model_name (runtime.checkpoint schema; train/engine.py meta)
    ckpt = {"format": "efficientformer-train/2", "model": relu.state_dict(), "model_name": relu.name}
    torch.save(ckpt, tmp_path / "relu.pth")
    back = create_model("efficientformerv2_s0_relu", img_size=32, num_classes=10, checkpoint=tmp_path / "relu.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), relu(x))
    # the same weights into the GELU model would run silently wrong: refused, naming the model to build
    with pytest.raises(CheckpointError, match="--model efficientformerv2_s0_relu"):
        create_model("efficientformerv2_s0", img_size=32, num_classes=10, checkpoint=tmp_path / "relu.pth")
    # fine-tuning (strict=False) from a GELU run into the ReLU model is allowed, and said
    gelu_ckpt = {
        "model": create_model("efficientformerv2_s0", img_size=32, num_classes=10).state_dict(),
        "model_name": "efficientformerv2_s0",
    }
    target = create_model("efficientformerv2_s0_relu", img_size=32, num_classes=10)
    report = load_checkpoint(target, gelu_ckpt, strict=False)
    assert any("activation changed" in n for n in report.notes)
    with pytest.raises(CheckpointError, match="trained as efficientformerv2_s0 "):
        load_checkpoint(target, gelu_ckpt, strict=True)

    # architecture files: act written only when it is not GELU, read back
    assert "act" not in spec_to_arch(VARIANTS["efficientformerv2_s0"])
    path = save_arch(with_activation(VARIANTS["efficientformerv2_s0"], "hardswish"), tmp_path / "s0_hs.yaml")
    assert load_arch(path)["act"] == "hardswish"
    assert count(create_model(str(path), img_size=32), nn.Hardswish) > 0

    # deploy form: follows the activation (fused oneDNN kernels and plain path), saved and loaded by name
    fused = deploy(relu)
    with torch.no_grad():
        ref = relu(x)
        assert (fused(x) - ref).abs().max() < 1e-5
        assert (fused.use_cpu_kernels(False)(x) - ref).abs().max() < 1e-5
    loaded = load_deployed(save_deployed(fused, tmp_path / "relu.safetensors"))
    assert loaded.name == "efficientformerv2_s0_relu"
    with torch.no_grad():
        assert (loaded(x) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["efficientformerv2_s0", "efficientformer_l1"])
@pytest.mark.parametrize("act", SWAPPED)
def test_deploy_form_matches_swapped_model(name, act):
    from torch.profiler import ProfilerActivity, profile

    model = randomise(create_model(name, img_size=64, num_classes=10, act=act))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = deploy(model)
        assert (fused(x) - ref).abs().max() < 1e-5  # oneDNN conv + ReLU / Hardswish post-ops
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fused(x)
        calls = {e.key: e.count for e in prof.key_averages()}
        assert (fused.use_cpu_kernels(False)(x) - ref).abs().max() < 1e-5
    # every activation that follows a convolution runs inside it; only those after an attention (V2) or a linear
    # layer (V1's token MLP) run on their own
    outside = 5 if name == "efficientformerv2_s0" else 1
    assert calls.get(f"aten::{act}", 0) == outside, calls
    assert "aten::gelu" not in calls and calls["mkldnn::_convolution_pointwise"] > 0


@pytest.mark.parametrize("act", SWAPPED)
def test_onnx_export_of_swapped_model(tmp_path, act):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from efficientformer.deploy.export import export_onnx

    model = randomise(create_model("efficientformerv2_s0", img_size=32, num_classes=10, act=act))
    report = export_onnx(deploy(model), tmp_path / "m.onnx", batch=1)  # raises if ONNX Runtime disagrees
    assert report.max_abs_diff < 1e-4
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "Gelu" not in ops and ops.count({"relu": "Relu", "hardswish": "HardSwish"}[act]) == 35


def tiny_v2_arch(act: str) -> dict:
    """A small V2 (one attention block in stages 3 and 4, incl. the stride-2 one) that compiles in seconds."""
    return {
        "format": "efficientformer-arch",
        "family": "v2",
        "name": "tiny",
        "widths": [16, 16, 32, 32],
        "depths": [1, 1, 2, 2],
        "mlp_ratios": [[2], [2], [2, 2], [2, 2]],
        "attention": [[], [], [1], [1]],
        "act": act,
    }


@pytest.mark.slow
def test_pt2e_int8_fuses_relu_and_hardswish_into_qconv():
    """After Inductor's lowering, ReLU / Hardswish are post-ops of the int8 convolutions (GELU never is)."""
    pytest.importorskip("torchao")
    from torch._inductor.utils import run_and_get_code

    from efficientformer.deploy.pt2e import quantize_pt2e_x86

    fused_posts = {}
    for act in ("gelu", *SWAPPED):
        model = randomise(create_model("tiny", arch=tiny_v2_arch(act), img_size=32, num_classes=10))
        x = torch.randn(1, 3, 32, 32)
        q, code = run_and_get_code(lambda m=model, x=x: quantize_pt2e_x86(deploy(m), x, [x]))
        with torch.no_grad():
            assert q(x).shape == (1, 10)
        calls = re.findall(r"torch\.ops\.onednn\.qconv\w*\.\w+\(([^\n]*)", "\n".join(code))
        assert calls, "no int8 convolution in the compiled graph"
        fused_posts[act] = sum(f"'{act}'" in c for c in calls)
    # 6 blocks x 2 FFN activations + 2 stem activations follow a convolution directly
    assert fused_posts["gelu"] == 0
    assert fused_posts["relu"] >= 14 and fused_posts["hardswish"] >= 14
