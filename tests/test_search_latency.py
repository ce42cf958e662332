"""Latency tables: sanity of measured entries, resuming an interrupted build, CSV import, lut-check."""

from __future__ import annotations

import json

import pytest

from efficientformer.cli import main
from efficientformer.models.efficientformer_v2 import V2_VARIANTS
from efficientformer.search.latency import LatencyTable, LatencyTableError, build_table, import_table, network_keys
from efficientformer.search.lut_check import candidate_specs
from efficientformer.search.space import V2Space

QUIET = {"progress": False, "log": lambda *_: None}


def test_latency_grows_with_width_and_expansion(tmp_path):
    # stage 1 at 128 px is a 32x32 map; 9x and 4x the work must show whatever the machine's load
    keys = ["ffn/s1/w16/h32", "ffn/s1/w48/h192", "ffn/s1/w32/h64", "ffn/s1/w32/h256"]
    table = build_table(
        tmp_path / "t.json",
        "v2",
        "torch",
        img_size=128,
        warmup=3,
        runs=15,
        keys=keys,
        statistic="min",
        clock="cpu",
        **QUIET,
    )
    ms = {k: table.ms(k) for k in keys}
    assert ms["ffn/s1/w48/h192"] > ms["ffn/s1/w16/h32"]  # wider (and so wider hidden)
    assert ms["ffn/s1/w32/h256"] > ms["ffn/s1/w32/h64"]  # same width, larger expansion
    m = table.meta["machine"]
    assert m["cpu_model"] and m["threads"] == 1 and m["runtime"] == "torch" and "torch" in m["versions"]
    assert table.meta["complete"] and table.meta["statistic"] == "min"


def test_interrupted_table_resumes_where_it_stopped(tmp_path):
    keys = ["stem/w16", "stem/w24", "head/w128", "down/s2/i16/o32", "ffn/s2/w32/h64"]
    out = tmp_path / "lut.json"
    first = build_table(
        out, "v2", "torch", img_size=64, warmup=1, runs=3, keys=keys, stop_after=2, save_every_s=0.0, **QUIET
    )
    saved = json.loads(out.read_text())
    assert len(saved["entries"]) == 2 and saved["complete"] is False
    messages: list[str] = []
    second = build_table(
        out, "v2", "torch", img_size=64, warmup=1, runs=3, keys=keys, progress=False, log=messages.append
    )
    assert "2 of 5 entries present, measuring 3" in messages[0]
    assert set(second.entries) == set(keys) and second.meta["complete"]
    for k in first.entries:  # entries measured before the interruption are kept, not re-measured
        assert second.entries[k] == first.entries[k]
    with pytest.raises(ValueError, match="other settings"):
        build_table(out, "v2", "torch", img_size=96, keys=keys, **QUIET)
    with pytest.raises(ValueError, match="other settings"):  # the clock is part of the settings
        build_table(out, "v2", "torch", img_size=64, keys=keys, clock="cpu", **QUIET)
    with pytest.raises(ValueError, match="with --threads 1"):
        build_table(tmp_path / "x.json", "v2", "torch", threads=2, clock="cpu", keys=keys, **QUIET)


def test_imported_csv_predicts_the_sum(tmp_path):
    spec = V2_VARIANTS["efficientformerv2_s0"]
    keys = sorted(set(network_keys(spec)))
    csv = tmp_path / "phone.csv"
    csv.write_text(
        "# family: v2\n# device: iPhone 12\n# runtime: coreml\nkey,ms\n"
        + "".join(f"{k},{0.01 * (i + 1)}\n" for i, k in enumerate(keys))
    )
    table = import_table(csv)
    assert table.family == "v2" and table.meta["runtime"] == "coreml"
    expected = sum(0.01 * (keys.index(k) + 1) for k in network_keys(spec))
    assert table.predict(spec) == pytest.approx(expected)
    table.save(tmp_path / "phone.json")
    assert LatencyTable.load(tmp_path / "phone.json").predict(spec) == pytest.approx(expected)
    with pytest.raises(LatencyTableError, match="no entry"):
        table.predict(V2_VARIANTS["efficientformerv2_l"])
    csv.write_text("key,ms\nffn/s9/w1,1\n")
    with pytest.raises(LatencyTableError, match="not an entry key"):
        import_table(csv)


@pytest.mark.slow
def test_lut_and_lut_check_commands(tmp_path, capsys):
    space = {
        "widths": [[16, 24], [32, 48], [64, 96], [128, 176]],
        "max_depths": [2, 2, 3, 2],
        "min_depths": [1, 1, 1, 1],
        "ratios": [3, 4],
    }
    specs = candidate_specs("v2", space, 3, 0)[:1] + candidate_specs("v2", space, 3, 0)[4:]  # S0 + 3 random
    keys = sorted({k for s in specs for k in network_keys(s)})
    out = tmp_path / "lut.json"
    build_table(out, "v2", "torch", img_size=64, warmup=1, runs=3, keys=keys, space=V2Space.from_dict(space), **QUIET)
    rc = main(
        [
            "search",
            "lut-check",
            "--lut",
            str(out),
            "--random",
            "3",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--output-dir",
            str(tmp_path / "check"),
            "--update-lut",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "Kendall tau" in text and "within +-10%" in text and "per-kind" in text
    result = json.loads((tmp_path / "check" / "lut_check.json").read_text())
    assert result["summary"]["networks"] == 4 and result["summary"]["published"] == 1
    assert (tmp_path / "check" / "lut_check.png").is_file()
    table = LatencyTable.load(out)
    assert table.meta["calibration"]["method"] == "affine"  # 4 networks: too few for the per-kind fit
    row = next(r for r in result["rows"] if r["name"] == specs[0].name)
    assert table.predict(specs[0]) == pytest.approx(row["fitted_ms"])  # the stored fit is what predicts
    # the same measured networks refitted for another table of the same settings (no timing)
    rc = main(
        [
            "search",
            "lut-check",
            "--lut",
            str(out),
            "--measured",
            str(tmp_path / "check" / "lut_check.json"),
            "--output-dir",
            str(tmp_path / "recheck"),
        ]
    )
    again = json.loads((tmp_path / "recheck" / "lut_check.json").read_text())
    assert rc == 0 and [r["measured_ms"] for r in again["rows"]] == [r["measured_ms"] for r in result["rows"]]
    rc = main(
        [
            "search",
            "lut-check",
            "--lut",
            str(out),
            "--measured",
            str(tmp_path / "check" / "lut_check.json"),
            "--statistic",
            "min",
            "--output-dir",
            str(tmp_path / "recheck_min"),
        ]
    )
    mins = json.loads((tmp_path / "recheck_min" / "lut_check.json").read_text())
    assert rc == 0 and [r["measured_ms"] for r in mins["rows"]] == [r["measured_stats"]["min"] for r in result["rows"]]
    assert mins["table"]["statistic"] == "min"
    # bad input is one line on stderr, exit status 2
    assert (
        main(
            [
                "search",
                "lut",
                "--family",
                "v2",
                "--runtime",
                "torch",
                "--img-size",
                "64",
                "--output",
                str(tmp_path / "bad.json"),
                "--threads",
                "0",
            ]
        )
        == 2
    )
    assert "--threads must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["deploy", "onnxruntime"])
@pytest.mark.parametrize("family", ["v2", "v1"])
def test_every_runtime_times_every_block_kind(runtime, family, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTFORMER_EXPORT_CACHE", str(tmp_path / "exports"))
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    keys = {
        "v2": [
            "stem/w16",
            "ffn/s3/w64/h128",
            "attn/s3/w64",
            "attn/s4/w128",
            "down/s2/i16/o32",
            "dual/i64/o128",
            "head/w128",
        ],
        "v1": ["stem/w16", "mb4d/s2/w32", "mb3d/w128", "down/s4/i64/o128", "head/w128"],
    }[family]
    if runtime == "onnxruntime":
        keys = keys[1:3]  # each entry is an export: keep it short
    table = build_table(tmp_path / "t.json", family, runtime, img_size=64, warmup=1, runs=2, keys=keys, **QUIET)
    assert set(table.entries) == set(keys) and all(e["ms"] > 0 for e in table.entries.values())
    if runtime == "onnxruntime":  # one export per block, kept: a table at another thread count reuses it
        exports = sorted((tmp_path / "exports").glob("*.onnx"))
        assert len(exports) == len(keys)
        mtimes = [p.stat().st_mtime_ns for p in exports]
        build_table(tmp_path / "t2.json", family, runtime, threads=2, img_size=64, warmup=1, runs=2, keys=keys, **QUIET)
        assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "exports").glob("*.onnx"))] == mtimes


def _skip_unless_available(runtime: str) -> None:
    from efficientformer.search.latency import backend_of

    ok, why = backend_of(runtime).available()
    if not ok:
        pytest.skip(f"{runtime}: {why}")
    if runtime.startswith(("onnxruntime", "openvino")):
        pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")


# every registry runtime a user deploys with, beyond deploy / onnxruntime above; each entry is an export (and for
# INT8 a quantisation, for AOT a C++ compile), so one or two small entries each
NEW_RUNTIMES = {
    "onnxruntime-int8": ["ffn/s3/w64/h128", "stem/w16"],
    "openvino": ["ffn/s3/w64/h128", "attn/s3/w64"],
    "openvino-int8": ["ffn/s3/w64/h128", "stem/w16"],
    "openvino-bf16": ["ffn/s3/w64/h128"],
    "inductor-aot": ["ffn/s3/w64/h128"],
}
LIBRARY = {
    "onnxruntime-int8": "onnxruntime",
    "openvino": "openvino",
    "openvino-int8": "openvino",
    "openvino-bf16": "openvino",
    "inductor-aot": "torch",
}


@pytest.mark.parametrize("runtime", list(NEW_RUNTIMES))
def test_every_registry_runtime_builds_a_table_and_keeps_its_files(runtime, tmp_path, monkeypatch):
    _skip_unless_available(runtime)
    cache = tmp_path / "exports"
    monkeypatch.setenv("EFFICIENTFORMER_EXPORT_CACHE", str(cache))
    keys = NEW_RUNTIMES[runtime]
    out = tmp_path / "t.json"
    table = build_table(
        out, "v2", runtime, img_size=64, warmup=1, runs=3, keys=keys, statistic="min", clock="cpu", **QUIET
    )
    assert set(table.entries) == set(keys) and all(e["ms"] > 0 for e in table.entries.values())
    m = table.meta["machine"]
    assert m["runtime"] == runtime and m["backend"] == runtime and m["versions"][LIBRARY[runtime]]
    if runtime == "openvino-int8":
        assert m["versions"]["nncf"]
    # the files the backend derived from each block stay in the one exports cache: a second table reuses them
    suffix = {"onnxruntime-int8": ".int8.onnx", "openvino-int8": ".ov-int8.xml", "inductor-aot": ".pt2"}
    files = sorted(cache.glob(f"*{suffix.get(runtime, '.onnx')}"))
    assert len(files) == len(keys)
    mtimes = [p.stat().st_mtime_ns for p in sorted(cache.iterdir())]
    build_table(tmp_path / "t2.json", "v2", runtime, img_size=64, warmup=1, runs=2, keys=keys, **QUIET)
    assert [p.stat().st_mtime_ns for p in sorted(cache.iterdir())] == mtimes


def test_int8_blocks_are_quantised_like_the_same_layers_of_a_network(tmp_path, monkeypatch):
    # the network keeps its two stem convolutions in float: the stem entry must too, an inner block must not
    # (its first convolution is not the network's first)
    _skip_unless_available("onnxruntime-int8")
    onnx = pytest.importorskip("onnx")
    monkeypatch.setenv("EFFICIENTFORMER_EXPORT_CACHE", str(tmp_path / "exports"))
    from efficientformer.search.latency import export_stem

    build_table(
        tmp_path / "t.json",
        "v2",
        "onnxruntime-int8",
        img_size=64,
        warmup=1,
        runs=2,
        keys=["stem/w16", "ffn/s3/w64/h128"],
        **QUIET,
    )
    ident = "block v2 {} ctx1 img(64, 64) classes1000"
    shapes = {"stem/w16": (1, 3, 64, 64), "ffn/s3/w64/h128": (1, 64, 4, 4)}

    def quantised_convs(key):
        import torch

        stem = export_stem(ident.format(key), torch.zeros(shapes[key]))
        graph = onnx.load(str(tmp_path / "exports" / f"{stem}.int8.onnx")).graph
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        return len(convs), sum(made_by.get(n.input[0]) == "DequantizeLinear" for n in convs)

    total, quantised = quantised_convs("stem/w16")
    assert total == 2 and quantised == 0
    total, quantised = quantised_convs("ffn/s3/w64/h128")
    assert total >= 2 and quantised == total


def test_unknown_or_missing_runtime_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from efficientformer.search import latency

    with pytest.raises(ValueError, match="--runtime must be one of .*openvino"):
        build_table(tmp_path / "t.json", "v2", "tensorrt", keys=["stem/w16"], **QUIET)
    import dataclasses

    missing = dataclasses.replace(latency.BACKENDS["openvino"], available=lambda: (False, "not installed (pip x)"))
    monkeypatch.setitem(latency.BACKENDS, "openvino", missing)
    assert (
        main(
            [
                "search",
                "lut",
                "--family",
                "v2",
                "--runtime",
                "openvino",
                "--img-size",
                "64",
                "--output",
                str(tmp_path / "ov.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "openvino cannot run here: not installed" in err
