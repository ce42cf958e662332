"""Every export format for both families, from the eval model and from the deploy form, through the CLI.

Small resolution (64 px). The Core ML export of the V2 eval model (the CLI's default path) used to fail inside
coremltools with "only 0-dimensional arrays can be converted to Python scalars"; it runs in the default suite,
the rest of the matrix is marked slow.
"""

import argparse
import importlib.util

import pytest
import torch

from efficientformer import create_model
from efficientformer.cli.deploy import register
from efficientformer.utils.io import atomic_torch_save

IMG = 64
FORMATS = {
    "onnx": "onnx",
    "torchscript": None,
    "coreml": "coremltools",
    "executorch": "executorch",
    "pt2": None,
    "openvino": "openvino",
}
SUFFIX = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "coreml": ".mlpackage",
    "executorch": ".pte",
    "pt2": ".pt2",
    "openvino": ".xml",
}


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _cases():
    for fmt, module in FORMATS.items():
        for name in ("efficientformerv2_s0", "efficientformer_l1"):
            for deploy in (False, True):
                fast = fmt == "coreml" and name == "efficientformerv2_s0" and not deploy
                marks = [] if fast else [pytest.mark.slow]
                if module and importlib.util.find_spec(module) is None:
                    marks.append(pytest.mark.skip(reason=f"{module} not installed"))
                yield pytest.param(fmt, name, deploy, marks=marks, id=f"{fmt}-{name}-{'deploy' if deploy else 'eval'}")


@pytest.mark.parametrize("fmt,name,deploy", list(_cases()))
def test_every_format_every_family_both_forms(tmp_path, capsys, fmt, name, deploy):
    out = tmp_path / f"m{SUFFIX[fmt]}"
    argv = ["export", "--model", name, "--format", fmt, "--img-size", str(IMG), "--output", str(out)]
    assert run_cli(argv + (["--deploy"] if deploy else [])) == 0
    assert out.exists()
    text = capsys.readouterr().out
    assert f"wrote {out} ({fmt}, {IMG}x{IMG}" in text
    if fmt != "coreml":  # Core ML prediction needs macOS; the others are run back and compared
        assert "max |diff| vs PyTorch" in text
    else:
        from efficientformer.deploy.export import coreml_spec_summary

        spec = coreml_spec_summary(out)
        assert spec["inputs"] == ["image"] and spec["input_types"] == ["imageType"]
        assert spec["labels"][:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")
def test_core_ml_labels_are_the_checkpoints_class_names(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("efficientformerv2_s0", num_classes=3, img_size=IMG)
    ckpt = tmp_path / "best.pth"
    atomic_torch_save({"model": net.state_dict(), "class_names": ["cat", "dog", "rocket"]}, ckpt)
    out = tmp_path / "pets.mlpackage"
    argv = ["export", "--model", "efficientformerv2_s0", "--format", "coreml", "--img-size", str(IMG)]
    assert run_cli([*argv, "--deploy", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    from efficientformer.deploy.export import coreml_spec_summary

    assert coreml_spec_summary(out)["labels"] == ["cat", "dog", "rocket"]


def test_unwritable_output_fails_before_any_work(tmp_path, monkeypatch):
    import efficientformer.cli.deploy as cli_deploy

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the output path was checked")

    monkeypatch.setattr(cli_deploy, "build_model", no_build)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (tmp_path / "taken.pt").mkdir()
    cases = (("onnx", blocker / "m.onnx"), ("coreml", blocker), ("torchscript", tmp_path / "taken.pt"))
    for fmt, output in cases:
        argv = ["export", "--model", "efficientformerv2_s0", "--format", fmt, "--output", str(output)]
        with pytest.raises(ValueError, match=r"--output|cannot write the export") as info:
            run_cli(argv)
        assert "\n" not in str(info.value)
