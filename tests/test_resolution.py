"""Any input resolution, bias-table resampling on load, and no stale caches."""

import pytest
import torch
from reference_layouts import randomize_

from efficientformer import create_model, list_models, load_checkpoint


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_runs_at_other_resolutions(name, size):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformerv2_s0"])
def test_larger_and_non_square_inputs(name):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        for size in [(256, 320), (512, 512)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 10)


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformerv2_s0"])
def test_checkpoint_from_other_resolution_loads_by_resampling(name):
    src = randomize_(create_model(name)).eval()  # tables stored for 224
    dst = create_model(name, img_size=256).eval()
    report = load_checkpoint(dst, src.state_dict())
    assert report.resampled and all("(7, 7) -> (8, 8)" in r or "(14, 14) -> (16, 16)" in r for r in report.resampled)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        # a 224-model run at 256 resamples the same tables at runtime: identical result
        assert torch.allclose(dst(x), src(x), rtol=1e-5, atol=1e-6)
        # at its native size the 256-model gathers directly from its table, no resampling in forward
        bias = dst.stages[3].blocks[-1].attn.pos_bias
        assert bias((8, 8), (8, 8)).shape == (8, 64, 64)


def test_non_square_img_size_and_native_is_untouched():
    model = create_model("efficientformerv2_s0", img_size=(192, 256)).eval()
    assert tuple(model.stages[3].blocks[-1].attn.pos_bias.table.shape) == (8, 6, 8)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 192, 256)).shape == (1, 1000)


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformerv2_s0"])
def test_load_after_eval_is_not_stale(name):
    x = torch.randn(1, 3, 64, 64)
    model = create_model(name).eval()
    _outputs(model, x)  # a forward in eval mode first: would populate any cache
    other = randomize_(create_model(name), seed=3).eval()
    model.load_state_dict(other.state_dict())
    assert torch.equal(_outputs(model, x), _outputs(other, x))


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformerv2_s0"])
def test_in_place_updates_are_seen(name):
    model = randomize_(create_model(name)).eval()
    x = torch.randn(1, 3, 64, 64)
    before = _outputs(model, x)
    with torch.no_grad():  # as an EMA update would
        for n, p in model.named_parameters():
            if n.endswith("pos_bias.table"):
                p.mul_(0.5).add_(torch.randn_like(p))
    after = _outputs(model, x)
    fresh = create_model(name).eval()
    fresh.load_state_dict(model.state_dict())
    assert not torch.allclose(before, after) and torch.equal(after, _outputs(fresh, x))


def test_dtype_and_device_moves():
    model = randomize_(create_model("efficientformerv2_s0")).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = _outputs(model, x)
    model64 = model.to(torch.float64)
    assert model64.stages[3].blocks[-1].attn.pos_bias.native_index.dtype == torch.long
    out = _outputs(model64, x.double())
    assert out.dtype == torch.float64 and torch.allclose(out.float(), ref, rtol=1e-4, atol=1e-5)
    model.to(torch.float32).to("meta")  # buffers and parameters move together: nothing left behind on the CPU
    assert all(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
