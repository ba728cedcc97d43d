"""The judge's head: a one-hidden-layer MLP (or, with ``hidden`` 0, logistic regression) on the encoder's
features, trained full-batch with AdamW on weighted binary cross-entropy."""
from __future__ import annotations

from typing import Sequence


def make_head(in_dim: int, hidden: int):
    import torch

    if hidden <= 0:  # logistic regression
        return torch.nn.Linear(in_dim, 1)
    return torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(hidden, 1))


def example_weights(labels: Sequence[bool], groups: Sequence[str], balance_classes: bool,
                    group_scale: dict[str, float] | None = None) -> list[float]:
    """Per-example loss weights, mean 1: every group (data source) weighs the same in total (times
    ``group_scale[group]``, default 1), and with ``balance_classes`` so do positives and negatives within a group."""
    from collections import Counter

    keys = [(g, bool(l)) if balance_classes else (g, None) for g, l in zip(groups, labels)]
    count = Counter(keys)
    scale_of = group_scale or {}
    w = [scale_of.get(k[0], 1.0) / count[k] for k in keys]
    scale = len(w) / sum(w)
    return [x * scale for x in w]


def train_head(x, y, *, hidden: int = 256, epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-2,
               weights: Sequence[float] | None = None, seed: int = 0):
    """Full-batch AdamW on (weighted) binary cross-entropy."""
    import torch

    torch.manual_seed(seed)
    y = torch.as_tensor(y, dtype=torch.float32)
    w = torch.ones(len(y)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    head = make_head(x.shape[1], hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(head(x).squeeze(-1), y, reduction="none")
                * w).sum() / w.sum()
        loss.backward()
        opt.step()
    head.eval()
    return head


def predict(head, x) -> list[float]:
    import torch

    with torch.inference_mode():
        return torch.sigmoid(head(x).squeeze(-1)).tolist() if len(x) else []
