"""Parity with timm's implementation: the same random weights, in the official and timm layouts, give timm's logits."""

import zlib

import pytest
import timm
import torch
from reference_layouts import (
    mmpretrain_from_official,
    official_bias_idxs,
    official_from_timm,
    official_keys,
    randomize_,
)
from timm.models.efficientformer import checkpoint_filter_fn

from efficientformer import create_model, list_models, load_checkpoint
from efficientformer.models import VARIANTS
from efficientformer.models.layers import offset_index

# State-dict keys of the official models (snap-research/EfficientFormer, models/efficientformer*.py), counted there
OFFICIAL_KEY_COUNTS = {
    "efficientformer_l1": 281,
    "efficientformer_l3": 457,
    "efficientformer_l7": 649,
    "efficientformerv2_s0": 573,
    "efficientformerv2_s1": 727,
    "efficientformerv2_s2": 1063,
    "efficientformerv2_l": 1399,
}

_cache: dict[str, tuple] = {}


def timm_reference(name: str):
    """A timm model with randomised weights, its logits on a fixed batch, and that batch."""
    if name not in _cache:
        ref = randomize_(timm.create_model(name), seed=zlib.crc32(name.encode()) % 1000).eval()
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            _cache[name] = (ref, x, ref(x))
    return _cache[name]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list_models())
def test_reference_official_layout_is_the_official_one(name):
    spec = VARIANTS[name]
    ref, _, _ = timm_reference(name)
    official = official_from_timm(ref.state_dict(), spec)
    assert sorted(official) == sorted(official_keys(spec))
    assert len(official) == OFFICIAL_KEY_COUNTS[name]
    if spec.family == "v1":  # timm's own official->timm filter maps it back exactly
        back = checkpoint_filter_fn(official, ref)
        assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("layout", ["timm", "official"])
@pytest.mark.parametrize("name", list_models())
def test_logits_match_timm(name, layout):
    ref, x, expected = timm_reference(name)
    state = ref.state_dict() if layout == "timm" else official_from_timm(ref.state_dict(), VARIANTS[name])
    model = create_model(name).eval()
    report = load_checkpoint(model, state)
    assert report.layout == layout and report.variant == name
    assert not report.resampled and not report.missing and not report.unexpected
    with torch.inference_mode():
        out = model(x)
    assert rel_err(out, expected) <= 1e-5
    # every parameter matters: changing one deep attention-bias table moves the logits
    with torch.no_grad():
        tables = [p for n, p in model.named_parameters() if n.endswith("pos_bias.table")]
        tables[-1].add_(10 * torch.randn_like(tables[-1]))  # not a constant: softmax ignores shifts
        assert rel_err(model(x), expected) > 5e-5  # well above the parity tolerance


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformer_l3", "efficientformer_l7"])
def test_mmpretrain_layout_matches_timm(name):
    ref, x, expected = timm_reference(name)
    state = {
        "state_dict": mmpretrain_from_official(official_from_timm(ref.state_dict(), VARIANTS[name]), VARIANTS[name])
    }
    model = create_model(name).eval()
    report = load_checkpoint(model, state)
    assert report.layout == "mmpretrain" and report.container == "state_dict"
    with torch.inference_mode():
        assert rel_err(model(x), expected) <= 1e-5


def test_closed_form_offsets_equal_official_enumeration():
    assert torch.equal(offset_index((7, 7), (7, 7), 1), official_bias_idxs(7))
    assert torch.equal(offset_index((7, 7), (14, 14), 2), official_bias_idxs(14, 7))
    timm_v2 = timm.create_model("efficientformerv2_s0")
    timm_idx = dict(timm_v2.named_buffers())["stages.3.downsample.attn.attention_bias_idxs"]
    assert torch.equal(offset_index((7, 7), (14, 14), 2), timm_idx)
