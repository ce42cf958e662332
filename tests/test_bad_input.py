"""Bad input found while trying the toolkit as a new user: formula cells in CSV output, a one-class training set."""

import csv
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import efficientformer.cli as cli
from efficientformer import create_model
from efficientformer.data.folder import OneClassWarning, build_datasets
from efficientformer.data.transforms import eval_transform
from efficientformer.utils.io import SafeCsvWriter, atomic_torch_save, csv_safe_cell


@pytest.mark.parametrize("cell", ['=HYPERLINK("x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_formula_cells_are_neutralised(cell):
    assert csv_safe_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["cat", "-0.5", "+1e3", "1.0", 3, -2.5, "a=b", ""])
def test_other_cells_are_left_alone(cell):
    assert csv_safe_cell(cell) == cell


def test_safe_writer_round_trips_text():
    out = io.StringIO()
    SafeCsvWriter(out, lineterminator="\n").writerow(["=cmd|' /C calc'!A0", "dog", 1])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == ["'=cmd|' /C calc'!A0", "dog", "1"]


def test_predict_csv_neutralises_a_formula_class_name(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    net = create_model("efficientformerv2_s0", num_classes=2, img_size=64)
    ckpt = tmp_path / "best.pth"
    atomic_torch_save({"model": net.state_dict(), "class_names": ['=HYPERLINK("x")', "@dog"]}, ckpt)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    monkeypatch.setattr("sys.argv", ["efficientformer"])
    args = ["predict", str(image), "--model", "efficientformerv2_s0", "--checkpoint", str(ckpt), "--csv"]
    assert cli.main([*args, "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["class"] for r in rows} == {'\'=HYPERLINK("x")', "'@dog"}


def test_a_one_class_training_set_warns_once(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / "cat" / f"{i}.png")
    tf = eval_transform(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_datasets(tmp_path, tf, tf)
    ours = [w for w in caught if issubclass(w.category, OneClassWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "one class ('cat')" in msg and "100%" in msg and "\n" not in msg
