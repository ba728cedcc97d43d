"""Max-of-K curve (LLaMA 2 Fig. 7): the expected maximum (and median, and mean) gated score among k
samples of a prompt as k grows from 1 to K, averaged over prompts. The gap between max and median is
what rejection sampling can gain; Fig. 8 reads the best temperature off the same numbers.

Unbiased over subsets: rather than taking the first k samples, every prompt's n samples give the exact
expectation over all C(n, k) subsets of size k, via order statistics: in a random k-subset of the sorted
scores x_(1) <= ... <= x_(n), x_(i) is the j-th smallest with probability C(i-1, j-1) C(n-i, k-j) / C(n, k).
"""
from __future__ import annotations

from collections import defaultdict
from math import comb
from typing import Iterable


def expected_order_statistic(scores: list[float], k: int, j: int) -> float:
    """E[j-th smallest of a uniformly random k-subset of `scores`] (1 <= j <= k <= len(scores))."""
    n = len(scores)
    if not 1 <= j <= k <= n:
        raise ValueError(f"need 1 <= j <= k <= n, got j={j} k={k} n={n}")
    xs = sorted(scores)
    total = comb(n, k)
    return sum(x * comb(i, j - 1) * comb(n - 1 - i, k - j) for i, x in enumerate(xs)) / total


def expected_max_of_k(scores: list[float], k: int) -> float:
    """E[max of a random k-subset] (LLaMA 2 Fig. 7, 'max')."""
    return expected_order_statistic(scores, k, k)


def expected_median_of_k(scores: list[float], k: int) -> float:
    """E[median of a random k-subset] (LLaMA 2 Fig. 7, 'median'); even k averages the two middle ones."""
    lo, hi = (k + 1) // 2, k // 2 + 1
    return (expected_order_statistic(scores, k, lo) + expected_order_statistic(scores, k, hi)) / 2


def scores_by_prompt(samples: Iterable[dict], score: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        groups[str(s["prompt_id"])].append(float(s[score]))
    return dict(groups)


def max_of_k_curve(samples: Iterable[dict], score: str = "gated_logit") -> list[dict]:
    """[{"k", "max", "median", "mean", "prompts"}] for k = 1..K (K = the most samples any prompt has):
    expected max / median / mean score among k samples, averaged over the prompts with at least k."""
    groups = scores_by_prompt(samples, score)
    if not groups:
        return []
    k_max = max(len(v) for v in groups.values())
    curve = []
    for k in range(1, k_max + 1):
        rows = [v for v in groups.values() if len(v) >= k]
        curve.append({
            "k": k,
            "max": sum(expected_max_of_k(v, k) for v in rows) / len(rows),
            "median": sum(expected_median_of_k(v, k) for v in rows) / len(rows),
            "mean": sum(sum(v) / len(v) for v in rows) / len(rows),
            "prompts": len(rows),
        })
    return curve


def mean_max_of_k(samples: Iterable[dict], k: int, score: str = "gated_logit") -> float:
    """Mean over prompts of E[max of k samples]; the quantity the temperature sweep maximises (Fig. 8)."""
    groups = scores_by_prompt(samples, score)
    rows = [v for v in groups.values() if len(v) >= k]
    if not rows:
        raise ValueError(f"no prompt has {k} samples")
    return sum(expected_max_of_k(v, k) for v in rows) / len(rows)
