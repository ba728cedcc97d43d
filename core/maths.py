"""Small numeric helpers shared by the reward models, PPO and the metrics: whitening, the sigmoid, and the
Wilson interval every rate is reported with.

torch is imported inside the tensor functions, so pure-Python users (metrics) stay light.
"""
from __future__ import annotations

import math

from saferounds.core.records import Rate


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x, mask):
    """Population variance over the masked entries."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x, mask=None, *, stats=None, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) * rsqrt(var + eps) with the population variance.

    mask    whiten over the masked entries only; padding stays 0 (PPO advantages)
    stats   given (mean, var) instead of the batch's own: running statistics, or statistics reduced
            across processes
    A batch of one or of equal values gives 0, never NaN."""
    import torch

    if stats is not None:
        mean, var = stats
    elif mask is not None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean = x.mean()
        var = x.var(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    out = (x - mean) * torch.rsqrt(torch.as_tensor(var + eps, dtype=x.dtype, device=x.device))
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask


def sigmoid(x: float) -> float:
    """The logistic function on a float, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_with_ci(hits: int, n: int) -> Rate:
    """A RATE block: the share ``hits / n`` (0 when n == 0) with its Wilson 95% interval."""
    lo, hi = wilson_interval(hits, n)
    return {"rate": hits / n if n else 0.0, "n": n, "count": hits, "ci95": [lo, hi]}


def excludes(interval: tuple[float, float] | list[float], value: float) -> bool:
    """True when ``value`` lies outside the closed interval: e.g. an RM accuracy interval that excludes 0.5
    (chance) is evidence that the RM ranks."""
    lo, hi = interval
    return value < lo or value > hi
