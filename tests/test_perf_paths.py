"""The fast PyTorch paths of the benchmark: Inductor with freezing (fp32, bf16) and PT2E INT8, against the eval
model. Each compiles a model (tens of seconds on 2 cores), hence slow."""

import pytest
import torch
from test_deploy import randomise, rel_diff

from efficientformer import create_model
from efficientformer.deploy import deploy
from efficientformer.deploy.inductor import compile_aot, compile_frozen, package_kernels

pytestmark = pytest.mark.slow


def ops_run(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("name", ["efficientformerv2_s0", "efficientformer_l1"])
def test_inductor_frozen_fp32_equals_eval_model(name):
    model = randomise(create_model(name, img_size=64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fast = compile_frozen(deploy(model), x)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_diff(out, ref) < 1e-4
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))
    # freezing really applied: prepacked oneDNN convolutions, no plain aten convolution left in the graph
    ops = ops_run(lambda: fast(x))
    assert "mkldnn::_convolution_pointwise" in ops and "aten::convolution" not in ops


def test_inductor_cpp_wrapper_equals_eval_model():
    model = randomise(create_model("efficientformerv2_s0", img_size=64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fast = compile_frozen(deploy(model), x, cpp_wrapper=True)
    assert rel_diff(fast(x), ref) < 1e-4


def test_inductor_aot_package_equals_eval_model(tmp_path):
    model = randomise(create_model("efficientformerv2_s0", img_size=64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fast = compile_aot(deploy(model), x, package_path=tmp_path / "s0.pt2")
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_diff(out, ref) < 1e-4
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))
    # the package really holds the frozen form: prepacked oneDNN convolutions with fused post-ops, no plain ones
    code = package_kernels(tmp_path / "s0.pt2")
    assert "mkldnn__convolution_pointwise" in code and "aoti_torch_cpu_convolution(" not in code
    with pytest.raises(ValueError, match="eval-mode"):
        compile_aot(deploy(model).train(), x)


def test_inductor_bf16_close_to_fp32_and_float_out():
    model = randomise(create_model("efficientformerv2_s0", img_size=64))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fast = compile_frozen(deploy(model), x, "bf16")
    out = fast(x)
    assert out.dtype == torch.float32  # cast back inside the graph
    assert rel_diff(out, ref) < 0.1  # bf16 keeps 8 bits of mantissa
    with pytest.raises(ValueError, match="dtype"):
        compile_frozen(deploy(model), x, "fp8")
    with pytest.raises(ValueError, match="eval-mode"):
        compile_frozen(deploy(model).train(), x)


def test_pt2e_int8_close_to_fp32():
    pytest.importorskip("torchao")
    from efficientformer.deploy.pt2e import quantize_pt2e_x86

    model = randomise(create_model("efficientformerv2_s0", img_size=64))
    calib = [torch.randn(1, 3, 64, 64) for _ in range(8)]
    x = calib[0]
    with torch.no_grad():
        ref = model(x)
    q = quantize_pt2e_x86(deploy(model), x, calib)
    out = q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_diff(out, ref) < 0.25  # INT8 activations: coarse but the same function
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.95
    ops = ops_run(lambda: q(x))  # the deploy form's convolutions (a Conv2d subclass) really run in int8
    assert any(op.startswith("onednn::qconv") for op in ops), sorted(ops)
    with pytest.raises(ValueError, match="calibration"):
        quantize_pt2e_x86(deploy(model), x, [])


def test_benchmark_reports_ceiling_gflops_and_ratios():
    pytest.importorskip("onnxruntime")
    from efficientformer.bench.latency import BenchConfig, run_benchmark, to_markdown

    backends = ["deploy", "inductor", "inductor-aot", "onnxruntime"]
    cfg = BenchConfig(
        ["efficientformerv2_s0"],
        backends,
        [1],
        threads=1,
        img_size=64,
        warmup=1,
        runs=4,
        timm_rows=False,
        baseline=False,
        blocks=2,
    )
    result = run_benchmark(cfg, log=lambda _: None)
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == set(backends) and not result["notes"][1:], result["notes"]
    for r in rows.values():
        assert r["gflops"] > 0 and 0 < r["ceiling_frac"] and r["gmacs"] > 0 and r["faults_per_call"] >= 0
    assert result["environment"]["gemm_ceiling_fp32_gflops_b1"] > 0 and result["environment"]["isa"] is not None
    ratio = [c for c in result["comparisons"] if c["ratio"].startswith("pytorch / onnxruntime")]
    assert len(ratio) == 1 and ratio[0]["numerator"] in ("deploy", "inductor", "inductor-aot") and ratio[0]["value"] > 0
    assert "of ceiling" in to_markdown(result)


def test_quantize_cli_pt2e_writes_a_package_and_reports_agreement_and_speed(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from efficientformer.cli import main as run_cli

    pytest.importorskip("torchao")
    rng = np.random.default_rng(0)
    for split in ("calib", "eval"):
        (tmp_path / split).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
    args = [
        "quantize",
        "--backend",
        "pt2e",
        "--model",
        "efficientformerv2_s0",
        "--img-size",
        "32",
        "--calib-dir",
        str(tmp_path / "calib"),
        "--eval-dir",
        str(tmp_path / "eval"),
        "--runs",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert run_cli(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["calibration_images"] == 3 and report["eval_images"] == 3
    assert 0.0 <= report["top1_agreement"] <= 1.0 and report["speedup_vs_inductor_fp32"] > 0
    package = tmp_path / "out" / "efficientformerv2_s0.int8.pt2"
    assert report["package"] == str(package) and sorted(p.name for p in package.parent.iterdir()) == [package.name]
    # the package runs without the model code, in int8 (its kernels are oneDNN's quantised convolutions)
    assert "qconv" in package_kernels(package)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out, ref = (
            torch._inductor.aoti_load_package(str(package))(x),
            deploy(create_model("efficientformerv2_s0", img_size=32).eval())(x),
        )
    assert out.shape == ref.shape == (1, 1000) and torch.isfinite(out).all()
    capsys.readouterr()
    assert run_cli(["quantize", "--backend", "pt2e", "--onnx", "x.onnx", "--calib-dir", str(tmp_path / "calib")]) != 0
    assert "--backend pt2e quantises a PyTorch model" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("in the way")  # an --output-dir that cannot be a folder: one line, before work
    bad = [
        "quantize",
        "--backend",
        "pt2e",
        "--model",
        "efficientformerv2_s0",
        "--img-size",
        "32",
        "--calib-dir",
        str(tmp_path / "calib"),
        "--output-dir",
        str(tmp_path / "a_file"),
    ]
    assert run_cli(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choose another --output-dir" in err
