"""How well a judge agrees with human labels: agreement counts (precision, recall) and ROC AUC."""
from __future__ import annotations

from typing import Sequence


def auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    pos = [s for l, s in zip(labels, scores) if l]
    neg = [s for l, s in zip(labels, scores) if not l]
    if not pos or not neg:
        return None
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += avg * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def agreement(labels: Sequence[bool], predicted: Sequence[bool]) -> dict:
    tp = sum(1 for h, d in zip(labels, predicted) if h and d)
    tn = sum(1 for h, d in zip(labels, predicted) if not h and not d)
    fp = sum(1 for h, d in zip(labels, predicted) if not h and d)
    fn = sum(1 for h, d in zip(labels, predicted) if h and not d)
    n = tp + tn + fp + fn
    return {"n": n, "agreement": (tp + tn) / n if n else None, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
            "recall": tp / (tp + fn) if tp + fn else None, "precision": tp / (tp + fp) if tp + fp else None}
