"""Which precision a policy generates in on this machine (`model.generation_dtype`).

A 135M-8B model generating on a CPU is bound by matrix products; bf16 halves the bytes moved and,
on CPUs with native bf16 units (AVX512-BF16, AMX), runs about 1.6x faster than fp32. Without them
torch emulates bf16 and it is slower than fp32 (2.5x slower measured on an AVX2-only EPYC), so `auto`
detects the units rather than assuming them. On a GPU, `auto` follows the GPU's bf16 support.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The first CPU's model name in /proc/cpuinfo ("unknown" where there is none): benchmarks record it."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
                "unknown")


def native_bf16(capability: str | None = None, flags: set[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively: torch reports an AMX/AVX512-BF16 kernel level, or
    /proc/cpuinfo lists avx512_bf16 or amx_bf16."""
    if capability is None:
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except (AttributeError, RuntimeError):
            capability = ""
    if "AMX" in capability.upper() or "BF16" in capability.upper():
        return True
    return bool(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))


@functools.lru_cache(maxsize=1)
def _cpu_bf16() -> bool:
    return native_bf16()


def generation_dtype(setting: str = "auto", device: str | None = None) -> torch.dtype:
    """The dtype to generate in for `model.generation_dtype` (`auto`, `float32` or `bfloat16`)."""
    if setting == "float32":
        return torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    if setting != "auto":
        raise ValueError(f"generation_dtype: expected auto, float32 or bfloat16, got {setting!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_bf16() else torch.float32


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 512, seconds: float = 0.25) -> float:
    """This machine's matrix-product speed right now, in GFLOP per wall second at torch's current thread count:
    n x n x n products repeated for about `seconds` after one warm-up. A short probe (what the demo's estimate
    scales by), not a benchmark: bench/roofline.py measures the peak properly."""
    import time

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    done, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or done == 0:
        torch.mm(a, b)
        done += 1
    return 2 * n ** 3 * done / max(elapsed, 1e-9) / 1e9
