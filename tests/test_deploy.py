"""The deploy form: exact parity for all seven variants, save/load, errors."""

import pytest
import torch
from torch import nn

from efficientformer import create_model, list_models
from efficientformer.deploy import DeployedEfficientFormer, deploy, load_deployed, save_deployed


def randomise(model):
    """BN statistics, norms, layer scales and bias tables far from their initial values."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        for n, p in model.named_parameters():
            if n.endswith(".scale"):
                p.uniform_(0.05, 0.5)
            elif n.endswith("pos_bias.table"):
                p.normal_(0, 1)
            elif n.startswith("head"):
                p.normal_(0, 0.1)
    return model.eval()


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list_models())
def test_parity_small_resolution(name):
    model = randomise(create_model(name))  # built at 224, deployed for 64: the baked bias is resampled
    x = torch.randn(2, 3, 64, 64)
    fused = deploy(model, img_size=64)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert rel_diff(out, ref) < 1e-5
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.Dropout)) for m in fused.modules())
    assert model.head_dist is not None and isinstance(fused.head, nn.Linear)


def test_parity_224_and_model_untouched():
    model = randomise(create_model("efficientformerv2_s1"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fused = deploy(model)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_diff(fused(x), model.eval()(x)) < 1e-5
    assert not fused.training


def test_no_distillation_and_other_class_count():
    model = randomise(create_model("efficientformer_l1", distillation=False, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_diff(deploy(model, 64)(x), model(x)) < 1e-5


def test_save_load_round_trip(tmp_path):
    for name in ("efficientformer_l1", "efficientformerv2_s0"):
        model = randomise(create_model(name, img_size=64))
        fused = deploy(model)
        path = save_deployed(fused, tmp_path / f"{name}.safetensors")
        loaded = load_deployed(path)
        assert isinstance(loaded, DeployedEfficientFormer) and loaded.img_size == (64, 64)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(loaded(x), fused(x))


def test_errors(tmp_path):
    model = create_model("efficientformerv2_s0", img_size=64).eval()
    fused = deploy(model)
    with pytest.raises(ValueError, match="built for 64x64"):
        fused(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="multiple"):
        deploy(model, img_size=100)
    with pytest.raises(ValueError, match="features_only"):
        deploy(create_model("efficientformerv2_s0", features_only=True))
    with pytest.raises(TypeError, match="EfficientFormer"):
        deploy(nn.Linear(2, 2))
    assert deploy(fused) is fused
    with pytest.raises(FileNotFoundError):
        load_deployed(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        load_deployed(bad)
