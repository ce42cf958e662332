"""The deploy form: exact parity for all seven variants, save/load, errors."""

import copy
import pickle

import pytest
import torch
from torch import nn

from efficientformer import create_model, list_models
from efficientformer.deploy import DeployedEfficientFormer, deploy, load_deployed, save_deployed
from efficientformer.deploy.modules import FusedConv2d
from efficientformer.models.arch import build_from_arch


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
        plain = deploy(model, img_size=64, cpu_kernels=False)(x)
    assert rel_diff(out, ref) < 1e-5  # oneDNN fused kernels (the default on CPU)
    assert rel_diff(plain, ref) < 1e-5  # plain PyTorch ops (what exporters trace)
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


SEARCHED = {
    "v2": {
        "family": "v2",
        "name": "efficientformerv2_searched",
        "widths": [16, 24, 40, 56],
        "depths": [1, 2, 3, 2],
        "mlp_ratios": [[4], [3, 4], [2, 4, 3], [4, 2]],
        "attention": [[], [], [2], [1]],
        "act": "relu",
    },
    "v1": {
        "family": "v1",
        "name": "efficientformer_searched",
        "widths": [16, 24, 40, 56],
        "depths": [1, 1, 2, 2],
        "num_vit": 1,
    },
}


@pytest.mark.parametrize("family", ["v2", "v1"])
def test_searched_model_saves_and_loads(tmp_path, family):
    """A searched architecture has no registered name: the deploy file carries its architecture."""
    arch = {"format": "efficientformer-arch", "version": 1, **SEARCHED[family]}
    model = randomise(build_from_arch(arch, num_classes=7, img_size=64))
    fused = deploy(model, 64)
    loaded = load_deployed(save_deployed(fused, tmp_path / "searched.safetensors"))
    assert loaded.spec == fused.spec and loaded.spec.name == SEARCHED[family]["name"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), fused(x))


def test_deploy_file_without_arch_loads_by_name(tmp_path):
    """Files written before the architecture was recorded name a registered model; they still load."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    fused = deploy(randomise(create_model("efficientformerv2_s0", img_size=64)))
    path = save_deployed(fused, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "arch"}
    save_file(load_file(str(path)), str(tmp_path / "by_name.safetensors"), metadata=meta)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_deployed(tmp_path / "by_name.safetensors")(x), fused(x))
    meta["model"] = "efficientformerv2_searched"
    save_file(load_file(str(path)), str(tmp_path / "unknown.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="unknown model 'efficientformerv2_searched'"):
        load_deployed(tmp_path / "unknown.safetensors")


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


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _packed_caches(model):
    return [len(m._packed) for m in model.modules() if isinstance(m, FusedConv2d)]


@needs_onednn
def test_cpu_kernels_path_is_taken_only_for_eager_fp32_inference():
    model = randomise(create_model("efficientformerv2_s0", img_size=64))
    x = torch.randn(1, 3, 64, 64)
    fused = deploy(model)
    assert not any(p.requires_grad for p in fused.parameters())
    with torch.no_grad():
        ref = model(x)
        out = fused(x)
    assert all(n == 1 for n in _packed_caches(fused))  # every conv ran through a packed oneDNN weight
    assert rel_diff(out, ref) < 1e-5

    off = deploy(model, cpu_kernels=False)
    with torch.no_grad():
        off(x)
    assert not any(_packed_caches(off))

    # autograd through the input needs the plain path (the oneDNN ops have no backward)
    xg = x.clone().requires_grad_(True)
    fresh = deploy(model)
    fresh(xg).sum().backward()
    assert xg.grad is not None and not any(_packed_caches(fresh))

    # tracing records plain ops only, so traced / exported graphs stay portable
    traced = torch.jit.trace(deploy(model), x)
    assert "mkldnn::_convolution_pointwise" not in str(traced.inlined_graph)
    with torch.no_grad():
        assert rel_diff(traced(x), ref) < 1e-5

    # float64 falls back to plain ops, and .to() drops the packed cache
    fused64 = fused.double()
    assert not any(_packed_caches(fused64))
    with torch.no_grad():
        assert rel_diff(fused64(x.double()).float(), ref) < 1e-5
    assert not any(_packed_caches(fused64))


@needs_onednn
def test_cpu_kernels_cache_follows_weights_and_copies():
    model = randomise(create_model("efficientformer_l1", img_size=64))
    x = torch.randn(2, 3, 64, 64)
    fused = deploy(model)
    with torch.no_grad():
        fused(x)
        conv = fused.stages[0].blocks[0].fc1
        conv.weight.mul_(1.5)  # in-place edit: the cached layout must not be reused
        edited = fused(x)
        assert torch.allclose(edited, fused.use_cpu_kernels(False)(x), rtol=1e-4, atol=1e-5)
        fused.use_cpu_kernels(True)  # switching off dropped the cache; this forward packs again
        assert torch.equal(fused(x), edited)
        # a new input shape gets its own packed weight; deep copies and pickles drop the cache
        fused(torch.randn(1, 3, 64, 64))
        assert len(conv._packed) == 2
        clone = copy.deepcopy(fused)
        assert not any(_packed_caches(clone))
        assert torch.equal(clone(x), fused(x))
        again = pickle.loads(pickle.dumps(fused))
        assert torch.equal(again(x), fused(x))


def test_old_deploy_format_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    fused = deploy(create_model("efficientformerv2_s0", img_size=64).eval())
    path = save_deployed(fused, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "1"
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="format version '1'"):
        load_deployed(tmp_path / "old.safetensors")


def test_quantize_calibration_takes_the_models_own_preprocessing(tmp_path):
    import numpy as np
    from PIL import Image

    from efficientformer.deploy.quantize import load_image
    from efficientformer.models import ModelPreprocessing

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path)
    published = load_image(path, (64, 64))
    own = ModelPreprocessing(
        img_size=64, crop_pct=1.0, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=None
    )
    unnormalised = load_image(path, (64, 64), own)
    assert unnormalised.shape == published.shape == (3, 64, 64)
    assert unnormalised.min() >= 0.0 and unnormalised.max() <= 1.0  # mean 0, std 1: plain [0, 1] pixels
    assert published.min() < 0.0  # ImageNet normalisation
