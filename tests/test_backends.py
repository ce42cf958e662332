"""One benchmark, one registry: a backend added in a test appears in the table; the benchmark repeats its run,
gives each ratio's spread and warns when the load average exceeds its threads; every command that takes a model
name takes an architecture file; OpenVINO export parity and bf16 / INT8 agreement on real photos."""

import json

import numpy as np
import pytest
import torch
from test_deploy import randomise

import efficientformer.bench.latency as latency
from efficientformer import create_model
from efficientformer.cli import main as run_cli
from efficientformer.deploy import deploy
from efficientformer.deploy.backends import BACKENDS, Backend, BackendContext, prepare_runner, register_backend
from efficientformer.models.arch import save_arch
from efficientformer.models.registry import get_spec
from efficientformer.utils.machine import bf16_support

TINY = dict(threads=1, img_size=32, warmup=1, runs=2, timm_rows=False, baseline=False, ceiling=False)


@pytest.fixture
def fake_backend():
    calls = []

    def prepare(model, example, ctx):
        assert isinstance(ctx, BackendContext) and ctx.threads == 1 and ctx.workdir.is_dir()

        def run(x):
            calls.append(x.shape)
            return torch.zeros(x.shape[0], 1000)

        return run

    register_backend(Backend("fake-test", "fake", "fp32", "a backend registered by the test", prepare))
    yield calls
    BACKENDS.pop("fake-test")


def test_a_registered_backend_appears_in_the_table_with_its_spread(fake_backend):
    gpu = torch.cuda.is_available()
    backends = ["deploy", "fake-test"] + ([] if gpu else ["cuda"])
    cfg = latency.BenchConfig(["efficientformerv2_s0"], backends, [1], repeats=2, **TINY)
    result = latency.run_benchmark(cfg, log=lambda _: None)
    rows = {r["backend"]: r for r in result["rows"]}
    if not gpu:  # a backend that cannot run here is a note, not an error
        assert "cuda not timed: no CUDA GPU is available" in result["notes"]
    assert set(rows) == {"deploy", "fake-test"} and fake_backend  # really called
    assert rows["fake-test"]["precision"] == "fp32" and len(rows["fake-test"]["repeat_medians_ms"]) == 2
    assert len(rows["fake-test"]["times_ms"]) == 2 * cfg.runs
    md = latency.to_markdown(result)
    assert "| efficientformerv2_s0 | ours | fake-test | fp32 |" in md and "2 repeat(s)" in md
    assert result["environment"]["loadavg_samples"] and len(result["environment"]["loadavg_samples"]) == 4


def test_ratios_come_with_the_spread_of_the_repeats():
    medians = (("onnxruntime", 2.0, [2.0, 2.0, 2.0]), ("onnxruntime-int8", 1.0, [1.0, 0.8, 1.25]))
    r = [
        latency.BenchRow("m", "ours", b, 1, med, med, 1, 1, None, 3, repeat_medians_ms=reps) for b, med, reps in medians
    ]
    (c,) = latency.compare(r, 1, ())
    assert c["ratio"].startswith("onnxruntime-int8 speed-up") and c["values"] == [2.0, 2.5, 1.6]
    assert c["value"] == 2.0 and c["min"] == 1.6 and c["max"] == 2.5 and c["spread_pct"] == pytest.approx(45.0)


def test_noise_warning_when_the_load_average_exceeds_the_threads(monkeypatch, fake_backend):
    cfg = latency.BenchConfig(["efficientformerv2_s0"], ["fake-test"], [1], repeats=1, **TINY)
    loads = iter([0.5, 3.5, 0.7])
    monkeypatch.setattr(latency, "load_average", lambda: next(loads))
    logged = []
    result = latency.run_benchmark(cfg, log=logged.append)
    (warning,) = result["warnings"]
    assert "\n" not in warning and "load average reached 3.50" in warning and "1 thread(s)" in warning
    assert warning in logged and warning in latency.to_markdown(result)
    monkeypatch.setattr(latency, "load_average", lambda: 0.9)  # below the thread count: no warning
    cfg.clock = "cpu"  # the process's CPU time: what one thread measures on a shared machine
    quiet = latency.run_benchmark(cfg, log=lambda _: None)
    assert quiet["warnings"] == [] and "process CPU time" in quiet["environment"]["method"]
    with pytest.raises(ValueError, match="--clock"):
        latency.run_benchmark(latency.BenchConfig(["efficientformerv2_s0"], ["fake-test"], clock="gpu"))


def test_unknown_backend_is_one_line(capsys):
    assert run_cli(["benchmark", "--model", "efficientformerv2_s0", "--backend", "nope"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown backend 'nope'" in err and "openvino-int8" in err


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def arch_file(tmp_path):
    spec = get_spec("efficientformerv2_s0")
    path = tmp_path / "found" / "arch.yaml"
    path.parent.mkdir()
    save_arch(spec, path)
    return path


@pytest.mark.slow
def test_architecture_file_where_a_model_name_goes(tmp_path, arch_file, capsys, image_folder):
    pytest.importorskip("onnxruntime")
    assert latency.resolve_models(f"efficientformerv2_s0,{arch_file}") == ["efficientformerv2_s0", str(arch_file)]
    with pytest.raises(FileNotFoundError, match="architecture file not found"):
        latency.resolve_models(str(tmp_path / "missing.yaml"))
    assert run_cli(["profile", "--model", str(arch_file), "--img-size", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["macs"] > 0
    assert (
        run_cli(
            [
                "export",
                "--model",
                str(arch_file),
                "--format",
                "onnx",
                "--img-size",
                "32",
                "--output",
                str(tmp_path / "a.onnx"),
                "--deploy",
            ]
        )
        == 0
    )
    assert "max |diff|" in capsys.readouterr().out
    assert (
        run_cli(
            [
                "quantize",
                "--model",
                str(arch_file),
                "--img-size",
                "32",
                "--calib-dir",
                str(image_folder),
                "--mode",
                "dynamic",
                "--runs",
                "2",
                "--output-dir",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "bench"
    assert (
        run_cli(
            [
                "benchmark",
                "--model",
                str(arch_file),
                "--backend",
                "deploy",
                "--img-size",
                "32",
                "--runs",
                "2",
                "--warmup",
                "1",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--no-timm",
                "--no-baseline",
                "--no-ceiling",
                "--omp-wait-policy",
                "inherit",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert [(r["model"], r["backend"]) for r in rows] == [(str(arch_file), "deploy")]


# ---------------------------------------------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------------------------------------------
def real_photos(size: int) -> torch.Tensor:
    """Real photographs that ship inside scikit-image and scikit-learn, centre-cropped and evaluated as the model
    is (resize, crop, ImageNet normalisation), plus their mirror images: 24 images."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from efficientformer.data.transforms import EvalTransform

    photos = [getattr(skdata, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "cat", "horse")]
    photos += [np.stack([skdata.camera()] * 3, -1), np.stack([skdata.moon()] * 3, -1)]
    photos = [p if p.dtype == np.uint8 else (p * 255).astype(np.uint8) for p in photos]
    try:
        from sklearn.datasets import load_sample_images

        photos += list(load_sample_images().images)
    except ImportError:
        pass
    tf = EvalTransform(img_size=size)
    out = []
    for p in photos:
        img = Image.fromarray(p[..., :3]).convert("RGB")
        out += [tf(img), tf(img.transpose(Image.FLIP_LEFT_RIGHT))]
    return torch.stack(out[:24])


@pytest.fixture(scope="module")
def s0_photos():
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = deploy(randomise(create_model("efficientformerv2_s0", img_size=64)))
    x = real_photos(64)
    with torch.no_grad():
        ref = torch.cat([model(xi[None]) for xi in x])
    return model, x, ref


@pytest.mark.slow
def test_openvino_export_parity_and_cli(tmp_path, capsys):
    pytest.importorskip("openvino")
    assert (
        run_cli(
            [
                "export",
                "--model",
                "efficientformerv2_s0",
                "--format",
                "openvino",
                "--img-size",
                "32",
                "--deploy",
                "--output",
                str(tmp_path / "s0"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (tmp_path / "s0.xml").is_file() and (tmp_path / "s0.bin").is_file() and "openvino" in out
    diff = float(out.split("max |diff| vs PyTorch ")[1].split()[0])
    assert diff < 1e-4
    if bf16_support()[0]:
        assert "bf16 execution" in out
    # from the model's ONNX file too
    from efficientformer.deploy.export import write_onnx
    from efficientformer.deploy.openvino import export_openvino

    model = deploy(create_model("efficientformerv2_s0", img_size=32).eval())
    write_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / "s0.onnx")
    report = export_openvino(model, tmp_path / "from_onnx.xml", onnx=tmp_path / "s0.onnx")
    assert report.max_abs_diff < 1e-4
    with pytest.raises(ValueError, match="NAME.xml"):
        export_openvino(model, tmp_path / "bad.bin")


def test_openvino_fp32_and_bf16_agree_on_real_photos(s0_photos, tmp_path):
    from efficientformer.deploy.quantize import logit_agreement

    model, x, ref = s0_photos
    ctx = BackendContext(threads=1, workdir=tmp_path)
    fp32 = prepare_runner("openvino", model, x[:1], ctx)
    out = torch.cat([fp32(xi[None]) for xi in x])
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))
    if not BACKENDS["openvino-bf16"].available()[0]:
        pytest.skip("no native bf16 on this CPU")
    bf16 = prepare_runner("openvino-bf16", model, x[:1], ctx)
    agree = logit_agreement(ref.numpy(), torch.cat([bf16(xi[None]) for xi in x]).numpy())
    # stated in benchmarks/README.md: bf16 keeps 8 bits of mantissa
    assert agree["top1_agreement"] >= 0.9 and agree["max_logit_diff_rel"] < 0.05, agree


@pytest.mark.slow
def test_openvino_int8_agrees_on_real_photos_and_quantize_cli(s0_photos, tmp_path, capsys):
    pytest.importorskip("nncf")
    from PIL import Image

    from efficientformer.deploy.quantize import logit_agreement

    model, x, ref = s0_photos
    calib = list(x[::2, None])
    int8 = prepare_runner("openvino-int8", model, x[:1], BackendContext(1, tmp_path, calib, "s0"))
    agree = logit_agreement(ref.numpy(), torch.cat([int8(xi[None]) for xi in x]).numpy())
    assert agree["top1_agreement"] >= 0.75 and agree["max_logit_diff_rel"] < 0.3, agree
    # the command: fp32 and INT8 IR written, agreement and speed reported
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate((x[:8] * 50 + 128).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(folder / f"{i}.png")
    args = [
        "quantize",
        "--backend",
        "openvino",
        "--model",
        "efficientformerv2_s0",
        "--img-size",
        "64",
        "--calib-dir",
        str(folder),
        "--eval-dir",
        str(folder),
        "--runs",
        "3",
        "--output-dir",
        str(tmp_path / "q"),
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert run_cli(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["eval_images"] == 8 and 0 <= report["variants"]["int8"]["top1_agreement"] <= 1
    assert (tmp_path / "q" / "efficientformerv2_s0.int8.xml").is_file()
    assert report["variants"]["int8"]["speedup_vs_fp32"] > 0


def test_inference_model_runs_in_openvino(s0_photos):
    from efficientformer.inference import inference_model

    model, x, _ = s0_photos
    photos = [(xi * 60 + 128).clamp(0, 255).byte() for xi in x[:3]]  # CHW uint8 images
    a = inference_model(model, photos, img_size=64, resize=64)
    b = inference_model(model, photos, img_size=64, resize=64, runtime="openvino")
    assert [r["pred_label"] for r in a] == [r["pred_label"] for r in b]
    assert max(float(np.abs(r["pred_scores"] - s["pred_scores"]).max()) for r, s in zip(a, b)) < 1e-5
    with pytest.raises(ValueError, match="runtime must be"):
        inference_model(model, photos[0], runtime="tensorrt")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_search_style_use_of_the_registry_on_blocks(tmp_path, backend):
    """The search times single blocks (any module, any input shape) through the registry, several in one folder:
    each runner runs its own module."""
    pytest.importorskip(backend)
    ctx = BackendContext(threads=1, workdir=tmp_path)  # no stem: fresh files for every prepare
    blocks = [
        torch.nn.Conv2d(8, 8, 3, padding=1).eval(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1), torch.nn.GELU()),
    ]
    x = torch.randn(1, 8, 7, 7)
    for block in blocks:
        with torch.no_grad():
            ref = block(x)
        out = prepare_runner(backend, block, x, ctx)(x)
        assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-5
