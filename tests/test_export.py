"""Exporters with parity checks, INT8 quantisation and the benchmark command, all at small sizes."""

import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch

from efficientformer import create_model
from efficientformer.cli.deploy import register
from efficientformer.deploy import deploy
from efficientformer.deploy.export import export_onnx, export_torchscript, parse_batch, require

IMG = 64


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def has(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    """Two tiny folders of structured (not pure-noise) RGB images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96] / 80.0
    for split, n in (("calib", 8), ("eval", 8)):
        (root / split).mkdir()
        for i in range(n):
            f = rng.uniform(1, 6, size=3)
            img = np.stack([np.sin(f[c] * xx + c) * np.cos(f[(c + 1) % 3] * yy) for c in range(3)], -1)
            img = (img * 0.5 + 0.5) * 255 + rng.normal(0, 8, img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / split / f"{i}.png")
    return root / "calib", root / "eval"


@pytest.mark.parametrize("name", ["efficientformerv2_s0", "efficientformer_l1"])
def test_onnx_parity_dynamic_batch(tmp_path, name):
    onnx = pytest.importorskip("onnx")
    model = deploy(create_model(name, img_size=IMG).eval())
    report = export_onnx(model, tmp_path / "m.onnx", batch="dynamic")
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert report.checked_batches == [1, 3]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)


def test_onnx_parity_failure_is_reported(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from efficientformer.deploy import export as ex

    model = deploy(create_model("efficientformerv2_s0", img_size=IMG).eval())
    monkeypatch.setattr(ex, "onnx_parity", lambda *a, **k: (0.5, [1]))
    with pytest.raises(ex.ExportParityError, match="disagrees"):
        ex.export_onnx(model, tmp_path / "m.onnx", batch=1)


def test_torchscript_parity(tmp_path):
    model = create_model("efficientformer_l1", img_size=IMG).eval()
    report = export_torchscript(deploy(model), tmp_path / "m.pt")
    assert report.max_abs_diff < 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() < 1e-4  # against the unfused model, too


@pytest.mark.skipif(
    not has("executorch"), reason="executorch not installed (optional extra efficientformer[executorch])"
)
def test_executorch_parity(tmp_path):
    # In a fresh interpreter: in the full suite (after ~170 tests that load OpenVINO, NNCF, ONNX Runtime, Core ML
    # and the trackers into one process) ExecuTorch's export or runtime died with SIGSEGV, which took the whole
    # pytest process down; alone, and as the CLI runs it, it passes. The parity check itself is unchanged.
    import subprocess
    import sys

    script = (
        "import sys; from efficientformer import create_model; from efficientformer.deploy import deploy; "
        "from efficientformer.deploy.export import export_executorch; "
        f"m = deploy(create_model('efficientformerv2_s0', img_size={IMG}).eval()); "
        "r = export_executorch(m, sys.argv[1], batch=1); print(r.max_abs_diff)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.pte")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-4 and (tmp_path / "m.pte").stat().st_size > 1e6


@pytest.mark.skipif(not has("coremltools"), reason="coremltools not installed (optional extra efficientformer[coreml])")
def test_coreml_spec(tmp_path):
    from efficientformer.deploy.export import coreml_spec_summary, export_coreml

    model = deploy(create_model("efficientformerv2_s0", img_size=IMG).eval())
    export_coreml(model, tmp_path / "m.mlpackage", batch="dynamic")
    spec = coreml_spec_summary(tmp_path / "m.mlpackage")
    assert spec["spec_type"] == "mlProgram"
    assert spec["inputs"] == ["image"] and spec["input_types"] == ["imageType"]
    assert "classLabel" in spec["outputs"] and spec["num_labels"] == 1000
    assert spec["labels"][0] == "tench, Tinca tinca" and spec["labels"][-1].startswith("toilet tissue")
    assert spec["ops"].get("conv", 0) > 50 and spec["ops"].get("classify") == 1
    assert "batch_norm" not in spec["ops"]
    import coremltools as ct

    pre = ct.utils.load_spec(str(tmp_path / "m.mlpackage")).description.input[0]
    assert pre.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB


def test_coreml_normalisation_is_exact():
    """The scalar ImageType scale plus the per-channel gain equal ImageNet normalisation."""
    from efficientformer.data.constants import IMAGENET_MEAN, IMAGENET_STD
    from efficientformer.deploy.export import _CoreMLInput

    std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
    s = float(std.mean())
    pixels = torch.randint(0, 256, (1, 3, 4, 4)).float()
    coreml_pre = pixels / (255 * s) - (mean / s).view(1, 3, 1, 1)  # what ImageType(scale, bias) computes
    wrapped = _CoreMLInput(torch.nn.Identity(), s / std)
    expected = (pixels / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(wrapped(coreml_pre), expected, atol=1e-6)


def test_missing_extra_is_one_line(monkeypatch):
    import sys

    for mod in ("coremltools", "executorch", "onnxruntime"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes the import fail as if not installed
    with pytest.raises(ImportError, match=r"^coremltools is not installed; .*pip install efficientformer\[coreml\]$"):
        require("coremltools")
    with pytest.raises(ImportError, match=r"pip install efficientformer\[executorch\]"):
        require("executorch")
    with pytest.raises(ImportError, match=r"pip install efficientformer\[onnx\]"):
        export_onnx(torch.nn.Identity(), "x.onnx")


def test_export_cli_and_errors(tmp_path, capsys):
    assert (
        run_cli(
            [
                "export",
                "--model",
                "efficientformerv2_s0",
                "--format",
                "torchscript",
                "--deploy",
                "--img-size",
                "64",
                "--output",
                str(tmp_path / "s0"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s0.pt").exists() and "max |diff|" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--batch"):
        parse_batch("zero")
    with pytest.raises(ValueError, match="--batch"):
        parse_batch("0")
    with pytest.raises(ValueError, match="fp16"):
        run_cli(
            [
                "export",
                "--model",
                "efficientformerv2_s0",
                "--format",
                "onnx",
                "--fp16",
                "--output",
                str(tmp_path / "x.onnx"),
                "--img-size",
                "64",
            ]
        )
    with pytest.raises(ValueError, match="checkpoint not found"):
        run_cli(
            [
                "export",
                "--model",
                "efficientformerv2_s0",
                "--format",
                "onnx",
                "--checkpoint",
                str(tmp_path / "nope.pth"),
                "--output",
                str(tmp_path / "x.onnx"),
            ]
        )
    with pytest.raises(ValueError, match="multiples? of 32"):
        run_cli(
            [
                "export",
                "--model",
                "efficientformerv2_s0",
                "--format",
                "torchscript",
                "--img-size",
                "50",
                "--output",
                str(tmp_path / "x.pt"),
            ]
        )


def test_quantize_on_image_folder(tmp_path, image_dirs, capsys):
    pytest.importorskip("onnxruntime")
    calib, held_out = image_dirs
    out = tmp_path / "q"
    assert (
        run_cli(
            [
                "quantize",
                "--model",
                "efficientformerv2_s0",
                "--img-size",
                "64",
                "--calib-dir",
                str(calib),
                "--eval-dir",
                str(held_out),
                "--output-dir",
                str(out),
                "--runs",
                "2",
                "--json",
                str(tmp_path / "q.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "q.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["int8-static", "int8-dynamic"]
    for v in report["variants"]:
        assert v["size_bytes"] < 0.5 * report["fp32"]["size_bytes"]
        assert 0.0 <= v["top1_agreement"] <= 1.0 and v["latency_ms"] > 0
    assert report["eval_images"] == 8 and report["calib_images"] == 8
    assert "top-1 agreement" in capsys.readouterr().out

    # the stem convs and the classifier stay float in the static model; everything else conv-like is quantised
    import onnx

    from efficientformer.deploy.quantize import float_nodes

    fp32_graph = onnx.load(str(out / "efficientformerv2_s0.fp32.onnx")).graph
    kept = float_nodes(out / "efficientformerv2_s0.fp32.onnx")
    convs = [n.name for n in fp32_graph.node if n.op_type == "Conv"]
    assert kept[:2] == convs[:2] and len(kept) == 3
    q = onnx.load(str(out / "efficientformerv2_s0.fp32.int8-static.onnx")).graph
    dq_outputs = {o for n in q.node if n.op_type == "DequantizeLinear" for o in n.output}
    weight_of = {n.name: n.input[1] for n in q.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert all(weight_of[name] not in dq_outputs for name in kept)  # float weights
    quantised = [name for name in convs[2:] if weight_of.get(name) in dq_outputs]
    assert len(quantised) == len(convs) - 2
    with pytest.raises(FileNotFoundError):
        run_cli(["quantize", "--onnx", str(tmp_path / "missing.onnx"), "--calib-dir", str(calib)])
    with pytest.raises(FileNotFoundError, match="image folder"):
        run_cli(
            [
                "quantize",
                "--onnx",
                str(out / "efficientformerv2_s0.fp32.onnx"),
                "--calib-dir",
                str(tmp_path / "nowhere"),
            ]
        )


def test_quantize_skips_a_truncated_calibration_image_and_leaves_no_prep_file(tmp_path, image_dirs, capsys):
    pytest.importorskip("onnxruntime")
    import shutil

    calib, _ = image_dirs
    bad_calib = tmp_path / "calib"
    shutil.copytree(calib, bad_calib)
    (bad_calib / "cut.png").write_bytes((calib / "0.png").read_bytes()[:100])  # truncated PNG
    fp32 = tmp_path / "s0.onnx"
    export_onnx(deploy(create_model("efficientformerv2_s0", img_size=IMG).eval()), fp32, batch=1)
    out = tmp_path / "q"
    argv = ["quantize", "--onnx", str(fp32), "--calib-dir", str(bad_calib), "--output-dir", str(out)]
    assert run_cli([*argv, "--mode", "static", "--runs", "1", "--json", str(tmp_path / "q.json")]) == 0
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["calib_images"] == 8 and len(report["skipped_images"]) == 1
    assert "cut.png" in report["skipped_images"][0]
    captured = capsys.readouterr()
    assert "cut.png" in captured.err and "1 unreadable image(s) skipped" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["s0.int8-static.onnx"]  # no *.prep.onnx left behind


def test_benchmark_end_to_end(tmp_path, capsys):
    pytest.importorskip("timm")
    assert (
        run_cli(
            [
                "benchmark",
                "--model",
                "efficientformerv2_s0",
                "--backend",
                "eager,deploy",
                "--batch-size",
                "1,2",
                "--threads",
                "1",
                "--img-size",
                "64",
                "--warmup",
                "1",
                "--runs",
                "2",
                "--output-dir",
                str(tmp_path),
                "--name",
                "b",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "b.json").read_text())
    keys = {(r["model"], r["impl"], r["backend"], r["batch"]) for r in data["rows"]}
    for b in (1, 2):
        assert ("efficientformerv2_s0", "ours", "deploy", b) in keys
        assert ("efficientformerv2_s0", "timm", "eager", b) in keys
        assert ("mobilenetv2_100", "timm", "eager", b) in keys
    env = data["environment"]
    assert env["threads"] == 1 and env["versions"]["torch"] == torch.__version__ and env["cpu_model"]
    assert (tmp_path / "b.md").read_text().count("| efficientformerv2_s0 |") >= 6
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown backend"):
        run_cli(["benchmark", "--model", "efficientformerv2_s0", "--backend", "tensorrt"])
    with pytest.raises(ValueError, match="comma-separated list of int"):
        run_cli(["benchmark", "--model", "efficientformerv2_s0", "--batch-size", "one"])
