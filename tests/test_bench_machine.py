"""Machine facts the benchmark stamps, the allocator pin, the GEMM probe and the OpenMP wait-policy switch."""

import os

import pytest
import torch

from efficientformer.utils import machine


def test_isa_flags_read_from_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16\n")
    real = machine.Path

    monkeypatch.setattr(machine, "Path", lambda p: real(info) if p == "/proc/cpuinfo" else real(p))
    isa = machine.isa_flags()
    assert isa["AVX2"] and isa["AVX-512F"] and isa["AVX512-BF16"] and isa["AMX-BF16"]
    assert not isa["AMX-INT8"] and not isa["AVX512-VNNI"]
    assert machine.cpu_model() == "Test CPU"


def test_bf16_unavailable_without_native_units(monkeypatch):
    monkeypatch.setattr(machine, "isa_flags", lambda: {name: False for name in machine.ISA_FLAGS.values()})
    ok, why = machine.bf16_support()
    assert not ok and "emulated" in why


def test_machine_report_and_allocator_pin():
    report = machine.machine_report(2)
    assert report["threads"] == 2 and report["cpu_model"] and isinstance(report["isa"], list)
    assert report["bf16"].startswith("bf16")
    line = machine.pin_allocator()
    assert line.startswith("allocator:")
    before = machine.minor_faults()
    assert machine.faults_per_call(lambda: None, 3) >= 0 and machine.minor_faults() >= before


def test_gemm_probe_flops_and_result():
    fn, flops = machine.gemm_probe(torch.float32, n=64)
    assert flops == 2 * 64**3
    fn()  # runs in place, no error


def test_omp_wait_policy_does_not_reexec_outside_the_cli(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not re-execute"))
    assert "could not apply" in machine.apply_omp_wait_policy("passive", ["pytest", "-q"])
    assert machine.apply_omp_wait_policy("inherit", ["x", "benchmark"]).startswith("OMP_WAIT_POLICY=unset")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert machine.apply_omp_wait_policy("passive", ["x", "benchmark"]) == "OMP_WAIT_POLICY=PASSIVE"
    with pytest.raises(ValueError, match="omp-wait-policy"):
        machine.apply_omp_wait_policy("spin")


def test_omp_wait_policy_reexecs_the_benchmark_command(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    seen = {}

    class Exec(Exception):
        pass

    def fake_execve(path, args, env):
        seen.update(path=path, args=args, env=env)
        raise Exec

    monkeypatch.setattr(os, "execve", fake_execve)
    with pytest.raises(Exec):
        machine.apply_omp_wait_policy("passive", ["/venv/bin/efficientformer", "benchmark", "--threads", "2"])
    assert seen["args"][1:] == ["-m", "efficientformer", "benchmark", "--threads", "2"]
    assert seen["env"]["OMP_WAIT_POLICY"] == "PASSIVE"


def test_every_benchmark_flag_has_help():
    import argparse

    from efficientformer.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = sub.choices["benchmark"]
    flags = [a for a in bench._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 15
    missing = [a.option_strings[0] for a in flags if not a.help]
    assert not missing, f"benchmark flags without help: {missing}"
    backend_help = next(a.help for a in flags if a.dest == "backend")
    for name in ("inductor", "inductor-cpp", "inductor-aot", "inductor-bf16", "pt2e-int8", "onnxruntime-int8"):
        assert name in backend_help
