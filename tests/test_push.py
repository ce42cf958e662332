"""``efficientformer push RUN_DIR REPO_ID``: a training, search or dense run folder becomes a Hub repository (weights,
config.json, model card from the run's facts) uploaded through HfApi.upload_folder, here a local stand-in."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import efficientformer.cli as cli
import efficientformer.cli.inference as cli_inference
from efficientformer import create_model
from efficientformer.models.arch import save_arch, spec_to_arch
from efficientformer.models.registry import VARIANTS
from efficientformer.utils.io import atomic_torch_save, atomic_write_json


class StandInApi:
    def __init__(self):
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        self.created = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.uploads.append((repo_id, {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}))
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


def _training_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "s0-digits"
    torch.manual_seed(0)
    model = create_model("efficientformerv2_s0", num_classes=3, img_size=64)
    cfg = {"model": "efficientformerv2_s0", "img_size": 64, "epochs": 2, "lr": 1e-3, "data": None, "finetune": None}
    atomic_torch_save(
        {
            "task": "classify",
            "model": model.state_dict(),
            "config": cfg,
            "class_names": ["0", "1", "2"],
            "model_name": "efficientformerv2_s0",
            "history": [{}, {}],
        },
        run / "last.pth",
    )
    atomic_write_json(
        run / "summary.json",
        {"dataset": "digits", "val_top1": 87.5, "ema_top1": 88.0, "best_top1": 88.0, "epochs": 2, "val_images": 48},
    )
    return run


def test_push_a_training_run(tmp_path, monkeypatch, capsys):
    run = _training_run(tmp_path)
    api = StandInApi()
    monkeypatch.setattr(cli_inference, "HUB_API", api)
    assert cli.main(["push", str(run), "me/s0-digits", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out and api.created == ("me/s0-digits", api.created[1])
    assert api.created[1]["private"] is True
    ((repo, files),) = api.uploads
    assert repo == "me/s0-digits" and set(files) == {"model.safetensors", "config.json", "README.md"}
    card = files["README.md"].decode()
    assert "library_name: efficientformer" in card and "top-1 87.50%" in card
    assert "efficientformer eval --model efficientformerv2_s0" in card and "--img-size 64" in card
    assert "trained from random weights" in card and "| epochs | 2 |" in card
    config = json.loads(files["config.json"])
    assert config["label_names"] == ["0", "1", "2"] and config["pretrained_cfg"]["input_size"] == [3, 64, 64]


def test_dry_run_writes_the_folder_and_a_bad_repo_id_is_one_line(tmp_path, capsys):
    run = _training_run(tmp_path)
    assert cli.main(["push", str(run), "me/s0", "--dry-run", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert cli.main(["push", str(run), "no repo"]) == 2
    assert "hf-hub:ORG/REPO" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path), "me/x"]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_push_a_search_run_with_its_architecture_and_latency_facts(tmp_path):
    from efficientformer.inference.publish import read_run

    run = tmp_path / "search"
    arch = spec_to_arch(VARIANTS["efficientformerv2_s0"], {"name": "efficientformerv2_found"})
    arch["depths"], arch["mlp_ratios"], arch["attention"] = [1, 1, 2, 2], [[4], [4], [4, 3], [4, 3]], [[], [], [1], [1]]
    lut = tmp_path / "lut.json"
    atomic_write_json(lut, {"runtime": "onnxruntime", "machine": {"cpu_model": "Test CPU 9000"}, "entries": {}})
    save_arch(
        {**arch, "search": {"accuracy_heldout": 61.25, "table_latency_ms": 1.5, "lut": str(lut)}}, run / "arch.yaml"
    )
    net = create_model(str(run / "arch.yaml"), num_classes=10, img_size=64)
    atomic_torch_save({"model": net.state_dict()}, run / "supernet_weights.pth")
    found = read_run(run)
    assert found.kind == "search" and found.model.spec.depths == (1, 1, 2, 2)
    card = found.card
    assert "61.25%" in card and "1.500 ms" in card and "Test CPU 9000" in card and "onnxruntime" in card
    assert yaml.safe_load(card.split("---")[1])["library_name"] == "efficientformer"


def test_push_a_dense_run_publishes_its_backbone(tmp_path):
    from efficientformer.inference.publish import read_run

    run = tmp_path / "seg"
    body = create_model("efficientformerv2_s0", features_only=True, img_size=64)
    state = {f"backbone.body.{k}": v for k, v in body.state_dict().items()}
    state["neck.conv.weight"] = torch.zeros(1)
    atomic_torch_save(
        {"task": "segment", "model": state, "config": {"model": "efficientformerv2_s0", "img_size": 64}},
        run / "last.pth",
    )
    found = read_run(run)
    assert found.kind == "dense" and found.model.num_classes == 0
    assert torch.equal(found.model.stem.conv1.conv.weight, body.stem.conv1.conv.weight)
    assert "a backbone" in found.card


def test_a_run_without_weights_is_refused(tmp_path):
    from efficientformer.inference.publish import read_run

    atomic_torch_save({"epoch": 3}, tmp_path / "last.pth")
    with pytest.raises(ValueError, match="holds no model weights"):
        read_run(tmp_path)
