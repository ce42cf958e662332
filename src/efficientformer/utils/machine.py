"""What the benchmark needs to know about the machine it runs on, so that figures from two machines can be read
side by side: the CPU's instruction-set extensions, whether bf16 is native (not emulated), the process-wide
state that made timings depend on what else ran in the same process, and a GEMM probe whose GFLOP/s is the
"ceiling" each row's achieved GFLOP/s is divided by.

Why the allocator is pinned (measured, see benchmarks/README.md): glibc serves large blocks with ``mmap`` below a
*dynamic* threshold that rises every time a large mmapped block is freed. A batch-1 forward allocates maps of a
few hundred KB to a few MB; in a fresh process they are mmapped and unmapped on every call (about 1,600 minor
page faults per V2-S0 call, i.e. ~6 MB of pages zeroed per inference), while after a bigger model has run in the
same process the threshold has grown and the same forward faults 0 times. So the same model ran at different
speeds depending on which models were timed before it. :func:`pin_allocator` fixes both thresholds up front.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: /proc/cpuinfo flag -> the name the benchmark reports
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "asimd": "NEON",
    "sve": "SVE",
}


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", "", platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def isa_flags() -> dict[str, bool]:
    """Which of the extensions in :data:`ISA_FLAGS` this CPU reports (all False where /proc/cpuinfo is absent)."""
    flags = _cpuinfo()[1]
    return {name: flag in flags for flag, name in ISA_FLAGS.items()}


def bf16_support() -> tuple[bool, str]:
    """(native, why): bf16 is timed only where the CPU computes it natively (AVX512-BF16 or AMX-BF16) and
    oneDNN knows it; elsewhere PyTorch would emulate bf16 in fp32 instructions, which measures nothing useful."""
    isa = isa_flags()
    if not (isa["AVX512-BF16"] or isa["AMX-BF16"]):
        return False, "bf16 unavailable: the CPU has neither AVX512-BF16 nor AMX-BF16 (it would be emulated)"
    if not torch.backends.mkldnn.is_available():
        return False, "bf16 unavailable: this torch build has no oneDNN"
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None and not probe():
        return False, "bf16 unavailable: oneDNN reports no native bf16 on this CPU"
    units = "AMX-BF16" if isa["AMX-BF16"] else "AVX512-BF16"
    return True, f"bf16 native ({units})"


def pin_allocator(threshold_bytes: int = 1 << 30) -> str:
    """Fix glibc's mmap and trim thresholds for the rest of the process (see the module docstring).

    Returns a line for the report; on other C libraries nothing is changed and the line says so."""
    if platform.system() != "Linux":
        return "allocator: not pinned (not Linux/glibc)"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "allocator: not pinned (no glibc mallopt)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, threshold_bytes) == 1 and mallopt(m_trim_threshold, threshold_bytes) == 1
    if not ok:
        return "allocator: mallopt refused the thresholds (not pinned)"
    return f"allocator: glibc mmap/trim thresholds pinned at {threshold_bytes >> 20} MiB"


def minor_faults() -> int:
    """Minor page faults of this process so far (each is a page the kernel had to map, usually zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(fn: Callable[[], object], calls: int = 5) -> float:
    start = minor_faults()
    for _ in range(calls):
        fn()
    return (minor_faults() - start) / calls


def gemm_probe(dtype: torch.dtype = torch.float32, n: int = 1024) -> tuple[Callable[[], object], float]:
    """A square ``n``-sized matrix product in ``dtype`` (oneDNN/MKL, the library the convolutions use) and its
    FLOPs: timed among the benchmark's candidates, its GFLOP/s is the ceiling rows are compared with."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)

    def fn() -> None:
        torch.mm(a, b, out=out)

    return fn, 2.0 * n**3


#: libgomp's wait policy for the benchmark (see :func:`apply_omp_wait_policy`)
OMP_POLICIES = ("passive", "active", "inherit")


def apply_omp_wait_policy(policy: str, argv: list[str] | None = None) -> str:
    """Make the OpenMP runtime under torch (libgomp) run with ``OMP_WAIT_POLICY=policy``.

    Why (measured on the shared 2-core machine, see benchmarks/README.md): with the default policy, torch's idle
    OpenMP workers spin between parallel regions. When another process holds one of the cores, each op's barrier
    waits for a worker that is spinning or descheduled: V2-S0's deploy form took 300-1300 ms instead of ~14 ms
    at 2 threads with passive waiting, and the spinning workers also slowed ONNX Runtime timed after them
    (9 -> 20 ms). libgomp reads the variable once, when torch is imported, so the process re-executes itself
    with the variable set; that is done only for the command line (``argv`` is this process's ``sys.argv``
    and runs ``benchmark``), otherwise nothing changes and the returned line says so.
    ``inherit`` leaves the environment as it is."""
    if policy not in OMP_POLICIES:
        raise ValueError(f"--omp-wait-policy must be one of {', '.join(OMP_POLICIES)}, got {policy!r}")
    current = os.environ.get("OMP_WAIT_POLICY")
    if policy == "inherit" or (current or "").lower() == policy:
        return f"OMP_WAIT_POLICY={current or 'unset (libgomp default: spin, then sleep)'}"
    argv = sys.argv if argv is None else argv
    if argv[1:2] != ["benchmark"]:
        return f"OMP_WAIT_POLICY={current or 'unset'} (could not apply {policy}: not started from the command line)"
    env = {**os.environ, "OMP_WAIT_POLICY": policy.upper()}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "efficientformer", *argv[1:]], env)
    raise AssertionError("unreachable")  # execve does not return


def autogroup() -> str | None:
    """The scheduler group of this process (Linux autogroup): ``nice`` set by other sessions does not apply
    across groups, so other sessions' niced jobs still take an equal share of the cores from this one."""
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        return Path("/proc/self/autogroup").read_text().strip() if enabled else "autogroup off"
    except OSError:
        return None


def machine_report(threads: int) -> dict:
    isa = isa_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa": [name for name, present in isa.items() if present],
        "bf16": bf16_support()[1],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "autogroup": autogroup(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
