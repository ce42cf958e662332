"""Weights through huggingface_hub: the shared cache read offline (the real on-disk layout), SHA-256 checks,
``hf-hub:ORG/REPO`` repositories in timm's layout, one-line errors. No test touches the network: every test runs
with ``HF_HUB_OFFLINE`` set, and the one that checks what would be downloaded replaces ``hf_hub_download``."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hub_cache import add_repo, json_bytes, offline_hub_cache, safetensors_bytes

from efficientformer.models import create_model, hub, model_preprocessing

NAME = "efficientformerv2_s0"
REPO = f"timm/{NAME}.snap_dist_in1k"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return offline_hub_cache(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    for name in hub.MODEL_NAMES:
        monkeypatch.delenv(hub.weights_env_var(name), raising=False)


def _random_weights(tmp_path: Path, **kwargs) -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    model = create_model(NAME, **kwargs).eval()
    return model, safetensors_bytes(model.state_dict(), tmp_path)


def test_names_and_no_unverified_hashes():
    assert hub.hub_id(NAME) == REPO
    assert hub.hub_url(NAME).endswith(f"/{REPO}/resolve/main/model.safetensors")
    assert set(hub.MODEL_NAMES) == set(hub.OFFICIAL_RELEASES) == set(hub.KNOWN_SHA256)
    assert hub.weights_env_var(NAME) == "EFFICIENTFORMER_WEIGHTS_EFFICIENTFORMERV2_S0"
    # no hash has been checked against the published files by us, so none is claimed
    assert all(v is None for v in hub.KNOWN_SHA256.values())
    with pytest.raises(hub.HubError, match="unknown pretrained tag"):
        hub.pretrained_path(NAME, "in22k")
    with pytest.raises(hub.HubError, match="no pretrained weights"):
        hub.pretrained_path("resnet50", None)
    assert hub.parse_hub_name("hf-hub:org/repo@v1.0") == ("org/repo", "v1.0")
    with pytest.raises(hub.HubError, match="hf-hub:ORG/REPO"):
        hub.parse_hub_name("hf-hub:not a repo")


def test_published_weights_load_offline_from_the_shared_cache(tmp_path, hub_cache):
    source, payload = _random_weights(tmp_path)
    snapshot = add_repo(hub_cache, REPO, {"model.safetensors": payload})
    path = hub.pretrained_path(NAME)
    assert path == snapshot / "model.safetensors"  # the file timm would read: no second copy
    model = create_model(NAME, pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), source(x))
    assert model.pretrained_cfg["hf_hub_id"] == REPO and model_preprocessing(model).img_size == 224


def test_a_corrupted_cache_file_is_refused(tmp_path, hub_cache):
    _, payload = _random_weights(tmp_path)
    snapshot = add_repo(hub_cache, REPO, {"model.safetensors": payload})
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(payload[:-8] + b"tampered")
    with pytest.raises(hub.HubError) as info:
        create_model(NAME, pretrained=True)
    msg = str(info.value)
    assert "Hub's SHA-256" in msg and str(blob) in msg and "\n" not in msg


def test_a_known_hash_is_enforced(tmp_path, hub_cache, monkeypatch):
    _, payload = _random_weights(tmp_path)
    add_repo(hub_cache, REPO, {"model.safetensors": payload})
    monkeypatch.setitem(hub.KNOWN_SHA256, NAME, hashlib.sha256(payload).hexdigest())
    assert hub.pretrained_path(NAME).is_file()
    monkeypatch.setitem(hub.KNOWN_SHA256, NAME, "0" * 64)
    with pytest.raises(hub.HubError, match="not the published file"):
        hub.pretrained_path(NAME)


def test_offline_and_not_cached_is_one_line_that_says_what_to_do(hub_cache):
    with pytest.raises(hub.HubError) as info:
        create_model(NAME, pretrained=True)
    msg = str(info.value)
    assert "HF_HUB_OFFLINE is set" in msg and f"hf download {REPO} model.safetensors" in msg
    assert str(hub_cache) in msg and hub.weights_env_var(NAME) in msg and "\n" not in msg
    with pytest.raises(hub.HubError, match="no weights file in the cache"):
        create_model("hf-hub:someone/missing", pretrained=True)


def test_downloads_go_through_hf_hub_download(tmp_path, monkeypatch):
    """Online, the only download call is huggingface_hub's, with our repository, file and cache."""
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _, payload = _random_weights(tmp_path)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["cache_dir"], kwargs["local_files_only"]))
        if len(calls) == 1:  # the first call "downloads" into the cache; later ones find it there
            add_repo(Path(kwargs["cache_dir"]), repo_id, {filename: payload}, commit="c0ffee")
        return str(Path(kwargs["cache_dir"]) / f"models--{repo_id.replace('/', '--')}/snapshots/c0ffee/{filename}")

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    path = hub.pretrained_path(NAME, cache=tmp_path / "c")
    assert calls == [(REPO, "model.safetensors", str(tmp_path / "c"), False)] and path.read_bytes() == payload
    hub.pretrained_path(NAME, cache=tmp_path / "c", allow_download=False)
    assert calls[-1][-1] is True  # allow_download=False: the cache only


def test_weights_env_var_overrides(tmp_path, monkeypatch, hub_cache):
    f = tmp_path / "eformer_s0_450.pth"
    f.write_bytes(b"x")
    monkeypatch.setenv(hub.weights_env_var(NAME), str(f))
    assert hub.pretrained_path(NAME) == f
    monkeypatch.setenv(hub.weights_env_var(NAME), str(tmp_path / "missing.pth"))
    with pytest.raises(hub.HubError, match="not a file"):
        hub.pretrained_path(NAME)


def test_hf_hub_repository_in_timm_layout(tmp_path, hub_cache):
    """A repository as timm publishes one: config.json (architecture, num_classes, pretrained_cfg, label_names)
    beside model.safetensors. Its config decides the model; its revision is honoured."""
    source, payload = _random_weights(tmp_path, num_classes=3, img_size=64)
    config = {
        "architecture": NAME,
        "num_classes": 3,
        "label_names": ["cat", "dog", "=bird"],
        "model_args": {"img_size": 64},
        "pretrained_cfg": {"input_size": [3, 64, 64], "crop_pct": 0.95, "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    add_repo(hub_cache, "someone/s0-pets", {"config.json": json_bytes(config), "model.safetensors": payload}, "v1")
    with pytest.raises(hub.HubError, match="no weights file in the cache"):
        create_model("hf-hub:someone/s0-pets", pretrained=True)  # main was never cached, only v1
    model = create_model("hf-hub:someone/s0-pets@v1", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), source(x)) and model.img_size == (64, 64)
    prep = model_preprocessing(model)
    assert (prep.img_size, prep.crop_pct, prep.mean, prep.class_names) == (64, 0.95, (0.5,) * 3, config["label_names"])
    fresh = create_model("hf-hub:someone/s0-pets@v1", num_classes=5)  # architecture only, another head
    assert fresh.num_classes == 5 and model_preprocessing(fresh).class_names is None
    tuned = create_model("hf-hub:someone/s0-pets@v1", pretrained=True, num_classes=5)  # heads dropped
    assert torch.equal(tuned.stem.conv1.conv.weight, source.stem.conv1.conv.weight)


def test_predict_a_hub_repository_at_its_own_resolution(tmp_path, hub_cache, capsys, monkeypatch):
    """`predict --model hf-hub:ORG/REPO --pretrained`: the repository's labels, resolution and weights."""
    import numpy as np
    from PIL import Image

    import efficientformer.cli as cli

    source, payload = _random_weights(tmp_path, num_classes=2, img_size=64)
    config = {"architecture": NAME, "num_classes": 2, "label_names": ["cat", "dog"], "model_args": {"img_size": 64}}
    add_repo(hub_cache, "someone/s0-two", {"config.json": json_bytes(config), "model.safetensors": payload})
    image = tmp_path / "a.png"
    Image.fromarray(np.full((80, 80, 3), 127, np.uint8)).save(image)
    monkeypatch.setattr("sys.argv", ["efficientformer"])
    assert cli.main(["predict", str(image), "--model", "hf-hub:someone/s0-two", "--pretrained", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["pred_class"] in ("cat", "dog") and "(hf-hub:someone/s0-two)" in err
