"""transformers' EfficientFormer layout (removed from transformers for v5): the state dicts of all three V1 sizes
map key for key, and L1's logits equal those transformers 4.40.2's own model gave on the same weights.

The fixture (``tests/fixtures/transformers_efficientformer``) was written once by its ``make_fixture.py`` in a
throwaway environment with transformers 4.40.2; the weights are remade here from the key names and shapes."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import add_repo, offline_hub_cache, safetensors_bytes

from efficientformer import create_model, load_checkpoint
from efficientformer.models import model_preprocessing

FIXTURE = Path(__file__).parent / "fixtures" / "transformers_efficientformer"
sys.path.insert(0, str(FIXTURE))
import make_fixture  # noqa: E402

KEYS = json.loads((FIXTURE / "keys.json").read_text())
L1 = json.loads((FIXTURE / "l1_logits.json").read_text())


def _state(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in make_fixture.random_state(KEYS[name]).items()}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_key_of_each_v1_size_maps(name):
    state = _state(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=make_fixture.NUM_LABELS, img_size=make_fixture.IMAGE_SIZE)
    model = model.to_empty(device="cpu")
    report = load_checkpoint(model, state)  # strict: every model key filled, no checkpoint key left over
    assert (report.layout, report.variant) == ("transformers", name)
    assert "transformers layout" in str(report)
    assert report.renamed == len(model.state_dict())


def test_l1_logits_equal_transformers_own_model():
    model = create_model("efficientformer_l1", num_classes=make_fixture.NUM_LABELS, img_size=make_fixture.IMAGE_SIZE)
    load_checkpoint(model, _state("efficientformer_l1"))
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(make_fixture.fixed_input()))
    assert L1["transformers_version"] == "4.40.2"
    torch.testing.assert_close(out, torch.tensor(L1["logits"]), rtol=1e-4, atol=1e-4)
    # without the distillation head (EfficientFormerForImageClassification): the class head alone
    plain = {k: v for k, v in _state("efficientformer_l1").items() if not k.startswith("distillation_classifier.")}
    single = create_model(
        "efficientformer_l1", num_classes=make_fixture.NUM_LABELS, img_size=make_fixture.IMAGE_SIZE, distillation=False
    )
    load_checkpoint(single, plain)
    with torch.no_grad():
        out = single.eval()(torch.from_numpy(make_fixture.fixed_input()))
    torch.testing.assert_close(out, torch.tensor(L1["cls_logits"]), rtol=1e-4, atol=1e-4)


def test_transformers_folder_and_hub_repository(tmp_path, monkeypatch):
    """``config.json`` + ``model.safetensors`` as transformers' save_pretrained writes them: a local folder for
    load_checkpoint, and a Hub repository for create_model("hf-hub:...") (labels and resolution from the config)."""
    payload = safetensors_bytes(_state("efficientformer_l1"), tmp_path)
    folder = tmp_path / "l1-folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_bytes((FIXTURE / "config.json").read_bytes())
    model = create_model("efficientformer_l1", num_classes=make_fixture.NUM_LABELS, img_size=make_fixture.IMAGE_SIZE)
    assert load_checkpoint(model, folder).layout == "transformers"

    cache = offline_hub_cache(tmp_path, monkeypatch)
    add_repo(
        cache,
        "someone/efficientformer-l1-digits",
        {"config.json": (FIXTURE / "config.json").read_bytes(), "model.safetensors": payload},
    )
    hub_model = create_model("hf-hub:someone/efficientformer-l1-digits", pretrained=True).eval()
    prep = model_preprocessing(hub_model)
    assert hub_model.num_classes == 10 and hub_model.img_size == (64, 64) and hub_model.head_dist is not None
    assert prep.img_size == 64 and prep.class_names == [f"digit {i}" for i in range(10)]
    with torch.no_grad():
        out = hub_model(torch.from_numpy(make_fixture.fixed_input()))
    torch.testing.assert_close(out, torch.tensor(L1["logits"]), rtol=1e-4, atol=1e-4)
