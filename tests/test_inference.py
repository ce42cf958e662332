"""inference_model and the predict / info commands: return types, class names, checkpoints, bad inputs, security."""

import csv
import io
import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

import efficientformer.cli as cli
from efficientformer import CheckpointError, create_model
from efficientformer.inference import ImageLoadError, imagenet_class_names, inference_model
from efficientformer.utils.io import atomic_torch_save

SIZE = 64  # crop used by every test: fast on CPU, a multiple of 32
NAME = "efficientformerv2_s0"
KEYS = {"pred_label", "pred_score", "pred_class", "pred_scores", "topk"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(NAME).eval()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A checkpoint as our training writes it: 3 classes with names, weights under 'model'."""
    torch.manual_seed(1)
    net = create_model(NAME, num_classes=3)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    atomic_torch_save({"model": net.state_dict(), "epoch": 3, "class_names": ["cat", "dog", "rocket"]}, path)
    return path


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, (name, size) in enumerate([("a.jpg", (70, 90)), ("b.png", (90, 70)), ("sub/c.webp", (80, 80))]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "README.txt").write_text("not an image, and not named like one: ignored in folder scans")
    return folder


def _check_result(r, num_classes=1000, topk=5):
    assert set(r) == KEYS
    assert isinstance(r["pred_label"], int) and isinstance(r["pred_score"], float)
    assert isinstance(r["pred_class"], str)
    assert isinstance(r["pred_scores"], np.ndarray) and r["pred_scores"].shape == (num_classes,)
    assert abs(float(r["pred_scores"].sum()) - 1.0) < 1e-4
    assert len(r["topk"]) == topk and r["topk"][0] == (r["pred_label"], r["pred_class"], r["pred_score"])
    scores = [s for _, _, s in r["topk"]]
    assert scores == sorted(scores, reverse=True) and r["pred_label"] == int(np.argmax(r["pred_scores"]))


# -- API ---------------------------------------------------------------------------------------------------------
def test_every_input_type_gives_the_same_answer(model, tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    inputs = [
        str(path),
        path,
        Image.fromarray(arr),
        arr,
        arr.astype(np.float64) / 255.0,
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),
        torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0,
    ]
    singles = [inference_model(model, x, img_size=SIZE, device="cpu") for x in inputs[:2]]
    for r in singles:
        _check_result(r)
        assert r["pred_class"] == imagenet_class_names()[r["pred_label"]]
    batch = inference_model(model, inputs, img_size=SIZE, batch_size=3, device="cpu")
    assert isinstance(batch, list) and len(batch) == len(inputs)
    for r in batch:
        _check_result(r)
        np.testing.assert_allclose(r["pred_scores"], singles[0]["pred_scores"], atol=1e-5)
    nchw = inference_model(model, torch.stack([inputs[-1]] * 2), img_size=SIZE, device="cpu")
    assert isinstance(nchw, list) and len(nchw) == 2
    assert inference_model(model, [], img_size=SIZE) == []


def test_model_mode_is_restored_and_topk_honoured(model):
    model.train()
    try:
        r = inference_model(model, np.zeros((64, 64, 3), np.uint8), img_size=SIZE, topk=3, device="cpu")
        assert model.training  # the caller's mode is left as it was
    finally:
        model.eval()
    _check_result(r, topk=3)
    with pytest.raises(ValueError, match="topk"):
        inference_model(model, np.zeros((64, 64, 3), np.uint8), img_size=SIZE, topk=0)


def test_name_and_mmpretrain_name_build_models():
    r = inference_model(
        "efficientformer-l1_3rdparty_8xb128_in1k", np.zeros((64, 64, 3), np.uint8), img_size=SIZE, device="cpu"
    )
    _check_result(r)
    with pytest.raises(ValueError, match="unknown model"):
        inference_model("efficientformer_l9", np.zeros((64, 64, 3), np.uint8), img_size=SIZE)


def test_class_names_come_from_the_checkpoint(small_ckpt):
    r = inference_model(NAME, np.zeros((64, 64, 3), np.uint8), checkpoint=small_ckpt, img_size=SIZE, device="cpu")
    _check_result(r, num_classes=3, topk=3)  # topk is capped at the class count
    assert r["pred_class"] in ("cat", "dog", "rocket")
    assert r["pred_class"] == ["cat", "dog", "rocket"][r["pred_label"]]
    override = inference_model(
        NAME, np.zeros((64, 64, 3), np.uint8), checkpoint=small_ckpt, img_size=SIZE, class_names=["x", "y", "z"]
    )
    assert override["pred_class"] in ("x", "y", "z")


def test_unnamed_class_count_gets_numbered_names(tmp_path):
    net = create_model(NAME, num_classes=20)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    r = inference_model(NAME, np.zeros((64, 64, 3), np.uint8), checkpoint=path, img_size=SIZE, device="cpu")
    assert r["pred_scores"].shape == (20,)
    assert r["pred_class"] == f"class_{r['pred_label']}"


def test_checkpoint_weights_are_really_used(small_ckpt):
    """The prediction equals a forward of the checkpoint's own weights."""
    from efficientformer.data.transforms import EvalTransform as EvalPreprocess

    img = np.random.default_rng(3).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    r = inference_model(NAME, img, checkpoint=small_ckpt, img_size=SIZE, device="cpu")
    net = create_model(NAME, num_classes=3).eval()
    net.load_state_dict(torch.load(small_ckpt, weights_only=True)["model"])
    with torch.inference_mode():
        x = EvalPreprocess(img_size=SIZE)(Image.fromarray(img)).unsqueeze(0)
        expected = torch.softmax(net(x), -1)[0].numpy()
    np.testing.assert_allclose(r["pred_scores"], expected, atol=1e-5)


def test_bad_image_in_a_list_names_it(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="bad.jpg: empty file"):
        inference_model(model, [np.zeros((64, 64, 3), np.uint8), bad], img_size=SIZE)


def test_bad_arguments(model, small_ckpt):
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="not both"):
        inference_model(NAME, img, checkpoint=small_ckpt, pretrained=True)
    with pytest.raises(ValueError, match="multiples of 32"):
        inference_model(model, img, img_size=100)
    with pytest.raises(ValueError, match="batch_size"):
        inference_model(model, img, batch_size=0)
    with pytest.raises(ValueError, match="class names"):
        inference_model(model, img, img_size=SIZE, class_names=["a", "b"])
    with pytest.raises(CheckpointError, match="not found"):
        inference_model(NAME, img, checkpoint="/nonexistent/w.pth")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            inference_model(NAME, img, device="cuda")


# -- security ----------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture()
def evil_ckpt(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    net = create_model(NAME, num_classes=3)
    torch.save({"model": net.state_dict(), "hook": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_pickle_payload_is_refused_by_inference_model(evil_ckpt):
    path, marker = evil_ckpt
    with pytest.raises(CheckpointError) as info:
        inference_model(NAME, np.zeros((64, 64, 3), np.uint8), checkpoint=path, img_size=SIZE)
    assert "refusing to unpickle" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_pickle_payload_is_refused_by_predict(evil_ckpt, photos, capsys, monkeypatch):
    path, marker = evil_ckpt
    code = _cli(monkeypatch, ["predict", str(photos / "a.jpg"), "--model", NAME, "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to unpickle" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


# -- the predict command -----------------------------------------------------------------------------------------
def _cli(monkeypatch, argv):
    # Only this area's commands: the test must not depend on other areas' modules being importable.
    monkeypatch.setattr(cli, "COMMAND_MODULES", (cli.inference,))
    return cli.main(argv)


def _predict(monkeypatch, *args):
    return _cli(monkeypatch, ["predict", *map(str, args), "--model", NAME, "--img-size", str(SIZE), "--device", "cpu"])


def test_predict_folder_json_with_a_corrupt_file(photos, capsys, monkeypatch):
    code = _predict(monkeypatch, photos, "--json", "--topk", "2", "--batch-size", "2")
    out, err = capsys.readouterr()
    assert code == 1  # something failed
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(pathlib.Path(r["file"]).name for r in rows) == ["a.jpg", "b.png", "c.webp"]
    for r in rows:
        assert isinstance(r["pred_label"], int) and len(r["topk"]) == 2 and r["topk"][0]["label"] == r["pred_label"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    assert "3 image(s) classified, 1 failed" in err


def test_predict_csv_and_table(photos, capsys, monkeypatch, small_ckpt):
    good = [photos / "a.jpg", photos / "b.png"]
    code = _predict(monkeypatch, *good, "--csv", "--checkpoint", small_ckpt, "--no-progress")
    out = capsys.readouterr().out
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 * 3  # topk 5 capped at 3 classes
    assert {r["class"] for r in rows} == {"cat", "dog", "rocket"}
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    code = _predict(monkeypatch, *good, "--topk", "1")
    out = capsys.readouterr().out
    assert code == 0 and str(good[0]) in out and str(good[1]) in out and "score" in out


def test_predict_bad_inputs_exit_codes(photos, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code = _predict(monkeypatch, photos / "a.jpg", empty, tmp_path / "missing.jpg", "--json")
    out, err = capsys.readouterr()
    assert code == 1 and len(out.splitlines()) == 1
    assert "empty.png: empty file" in err and "missing.jpg: no such file" in err
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    assert _predict(monkeypatch, empty_dir) == 2
    assert "no image files found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse usage error
        _cli(monkeypatch, ["predict", str(photos), "--model", NAME, "--json", "--csv"])
    assert info.value.code == 2
    assert _cli(monkeypatch, ["predict", str(photos), "--model", "nope"]) == 2


# -- the info command --------------------------------------------------------------------------------------------
def test_info_json_counts_params_and_macs(capsys, monkeypatch):
    assert _cli(monkeypatch, ["info", NAME, "--json", "--img-size", "64"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["params"] == 3_600_256  # the module count, both heads (tests/test_models.py: PARAMS)
    assert card["published_top1"] == {"300 epochs": 75.7, "450 epochs": 76.2}
    assert card["published_iphone12_latency_ms"] == 0.9
    assert card["hub_id"] == "timm/efficientformerv2_s0.snap_dist_in1k"
    assert card["official_releases"][0]["filename"] == "eformer_s0_450.pth"
    assert 0 < card["macs"] < 0.396e9 * (64 / 224) ** 2 * 1.5
    assert _cli(monkeypatch, ["info", "efficientformer_l1", "--img-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "79.2 (300 epochs), 80.2 (1000 epochs)" in text and "1.6 ms" in text and "licence" in text


def test_count_macs_matches_a_hand_count():
    from efficientformer.models.cards import count_macs

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)  # (1, N, 16)
            attn = t @ t.transpose(1, 2)  # attention-style matmul, counted
            return self.fc(attn @ t)

    n = 16 * 16  # tokens at 32x32 input
    hand = 16 * n * 27 + n * n * 16 + n * n * 16 + n * 16 * 8
    assert count_macs(Tiny(), img_size=32) == hand


def test_s0_macs_at_224_match_the_published_count():
    from efficientformer.models.cards import count_macs

    macs = count_macs(create_model(NAME), 224)
    assert abs(macs / 0.396e9 - 1) < 0.02  # official toolbox: 0.396 G (it also counts GELU/LN; we count matmuls)


# -- published layouts -------------------------------------------------------------------------------------------
def test_timm_and_official_files_give_timms_prediction(tmp_path):
    """A timm-layout .safetensors and an official-layout .pth (with the argparse ``args`` official training saves)
    of the same random weights predict exactly what timm's own model predicts."""
    import argparse

    from reference_layouts import official_from_timm, randomize_
    from safetensors.torch import save_file

    from efficientformer.data.transforms import EvalTransform as EvalPreprocess
    from efficientformer.models import VARIANTS

    timm = pytest.importorskip("timm")
    ref = randomize_(timm.create_model("efficientformerv2_s0", pretrained=False), seed=4).eval()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    timm_file = tmp_path / "model.safetensors"
    save_file(state, str(timm_file))
    official_file = tmp_path / "eformer_s0_450.pth"
    official = official_from_timm(state, VARIANTS["efficientformerv2_s0"])
    torch.save(
        {"model": official, "epoch": 449, "args": argparse.Namespace(model="efficientformerv2_s0")}, official_file
    )

    img = np.random.default_rng(5).integers(0, 255, (240, 260, 3), dtype=np.uint8)
    with torch.inference_mode():
        x = EvalPreprocess()(Image.fromarray(img)).unsqueeze(0)
        expected = torch.softmax(ref(x), -1)[0].numpy()
    for f in (timm_file, official_file):
        r = inference_model(NAME, img, checkpoint=f, device="cpu")  # published protocol: 256 -> 224
        np.testing.assert_allclose(r["pred_scores"], expected, atol=1e-5)
        assert r["pred_label"] == int(expected.argmax())


def test_predict_reports_an_unlistable_folder_and_a_strip_image(photos, capsys, monkeypatch):
    import os

    (photos / "locked").mkdir()
    Image.new("RGB", (70, 70)).save(photos / "locked" / "z.png")
    Image.new("L", (30000, 1)).save(photos / "strip.png")  # 1x30000: refused before any resize, not a MemoryError
    real = os.scandir

    def scandir(path="."):  # tests run as root, where chmod does not stop reading
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code = _predict(monkeypatch, photos, "--json", "--no-progress")
    out, err = capsys.readouterr()
    assert code == 1
    assert sorted(pathlib.Path(json.loads(r)["file"]).name for r in out.splitlines()) == ["a.jpg", "b.png", "c.webp"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("locked: cannot list folder" in e for e in errors)
    assert any("strip.png" in e and "aspect ratio" in e for e in errors)
    assert "1 folder(s) could not be read" in err


def test_control_characters_in_class_names_are_escaped(tmp_path, photos, capsys, monkeypatch):
    torch.manual_seed(1)
    net = create_model(NAME, num_classes=2)
    path = tmp_path / "evil_names.pth"
    atomic_torch_save({"model": net.state_dict(), "class_names": ["\x1b[2Jcat", "dog\nFAKE 1.0000"]}, path)
    for fmt in ([], ["--csv"]):
        code = _predict(monkeypatch, photos / "a.jpg", "--checkpoint", path, "--no-progress", *fmt)
        out = capsys.readouterr().out
        assert code == 0 and "\x1b" not in out and "\\x1b[2Jcat" in out and "dog\\nFAKE" in out


def test_uint8_float64_and_channels_last_tensors(model):
    rng = np.random.default_rng(3)
    u8 = torch.from_numpy(rng.integers(0, 256, (2, 3, 70, 90), dtype=np.uint8))
    ref = inference_model(model, u8.float() / 255, img_size=SIZE, device="cpu")
    for batch in (u8, u8.double() / 255):  # uint8 0..255 and float64 0..1 give the float32 answer
        out = inference_model(model, batch, img_size=SIZE, device="cpu")
        assert [r["pred_label"] for r in out] == [r["pred_label"] for r in ref]
        np.testing.assert_allclose(out[0]["pred_scores"], ref[0]["pred_scores"], atol=1e-6)
    with pytest.raises(ImageLoadError, match=r"input #0 .*looks channels-last.*permute\(0, 3, 1, 2\)") as info:
        inference_model(model, u8.permute(0, 2, 3, 1), img_size=SIZE, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):  # an already-normalised batch is not an image
        inference_model(model, torch.randn(1, 3, 64, 64, dtype=torch.float64), img_size=SIZE, device="cpu")


def test_inference_uses_the_models_own_resolution(tmp_path):
    """A model built (or trained) at 96 or 64 px is fed 96 or 64 px crops, not the published 224."""
    from efficientformer.inference.api import load_model, preprocessing_for

    net = create_model(NAME, num_classes=3, img_size=96).eval()
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    inference_model(net, np.zeros((120, 150, 3), np.uint8), device="cpu")
    assert seen == [(96, 96)]
    assert preprocessing_for(net, img_size=128).img_size == 128  # the caller's word wins

    path = tmp_path / "best.pth"  # as training at 64 px writes it: the name alone rebuilds it at 64
    trained = create_model(NAME, num_classes=3, img_size=64)
    atomic_torch_save({"model": trained.state_dict(), "class_names": list("abc")}, path)
    loaded = load_model(NAME, checkpoint=path, device="cpu")
    prep = preprocessing_for(loaded.model)
    assert loaded.model.img_size == (64, 64) and (prep.img_size, prep.resize_to) == (64, 73)
    assert loaded.class_names == ["a", "b", "c"]
