"""Hub out: save_pretrained writes a folder timm loads with equal logits (published variants) and this toolkit
reads back (searched ones too, with their architecture file); push_to_hub uploads it with HfApi.upload_folder
(here a local stand-in: no network)."""

import json
from pathlib import Path

import pytest
import timm
import torch
from hub_cache import add_repo, offline_hub_cache
from safetensors import safe_open

from efficientformer import create_model, model_preprocessing, push_to_hub, save_pretrained
from efficientformer.models.arch import spec_to_arch
from efficientformer.models.registry import VARIANTS


def _randomised(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    with torch.no_grad():  # trained-looking statistics, so a misplaced tensor changes the output
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.05)
                if key.endswith("running_var"):
                    value.abs_().add_(0.5)
    return model.eval()


def _repo_from(folder: Path, cache: Path, repo_id: str) -> None:
    add_repo(cache, repo_id, {p.name: p.read_bytes() for p in folder.iterdir()})


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("efficientformerv2_s0", {"num_classes": 3, "img_size": 64, "distillation": False}, 64),
        ("efficientformer_l1", {"num_classes": 3, "distillation": False}, 224),  # timm's V1 is 224 only
    ],
)
def test_timm_loads_the_saved_folder_with_equal_logits(tmp_path, monkeypatch, name, kwargs, size):
    model = _randomised(name, **kwargs)
    folder = model.save_pretrained(tmp_path / "out", class_names=["cat", "dog", "=bird"])  # = save_pretrained(model,
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["efficientformer"]["timm_compatible"] is True
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["class_names"]) == ["cat", "dog", "=bird"]
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=1e-5, atol=1e-5)
    assert theirs.pretrained_cfg["label_names"] == ["cat", "dog", "=bird"]

    cache = offline_hub_cache(tmp_path, monkeypatch)  # and back into this toolkit, through the Hub cache
    _repo_from(folder, cache, "me/roundtrip")
    again = create_model("hf-hub:me/roundtrip", pretrained=True).eval()
    assert (again.num_classes, again.head_dist is None) == (3, True)
    assert model_preprocessing(again).class_names == ["cat", "dog", "=bird"]
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_searched_architecture_travels_with_its_file(tmp_path, monkeypatch):
    arch = spec_to_arch(VARIANTS["efficientformerv2_s0"], {"name": "efficientformerv2_searched"})
    arch["depths"] = [1, 2, 3, 2]
    arch["mlp_ratios"] = [[4] * 1, [4] * 2, [3] * 3, [3] * 2]
    arch["attention"] = [[], [], [2], [1]]
    model = _randomised("efficientformerv2_searched", arch=arch, num_classes=2, img_size=64)
    folder = save_pretrained(model, tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    assert config["efficientformer"] == {
        **config["efficientformer"],
        "timm_compatible": False,
        "arch_file": "architecture.yaml",
    }
    cache = offline_hub_cache(tmp_path, monkeypatch)
    _repo_from(folder, cache, "me/searched")
    again = create_model("hf-hub:me/searched", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    assert again.spec.depths == (1, 2, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


class StandInApi:
    """What push_to_hub asks of huggingface_hub.HfApi, recorded instead of sent."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, files, kwargs))
        return "commit-info"


def test_push_uploads_the_saved_folder(tmp_path):
    model = _randomised("efficientformerv2_s0", num_classes=3, img_size=64)
    api = StandInApi()
    assert model.push_to_hub("me/s0-pets", api=api, card="# my card\n", private=True) == "commit-info"
    (create, repo, kwargs), (upload, repo2, files, _) = api.calls
    assert (create, repo, kwargs["private"], kwargs["exist_ok"]) == ("create_repo", "me/s0-pets", True, True)
    assert (upload, repo2) == ("upload_folder", "me/s0-pets")
    assert set(files) == {"model.safetensors", "config.json", "README.md"} and files["README.md"] == b"# my card\n"
    with pytest.raises(ValueError, match="hf-hub:ORG/REPO"):
        push_to_hub(model, "not a repo id", api=api)
    assert save_pretrained is type(model).save_pretrained
