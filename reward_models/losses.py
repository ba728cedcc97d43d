"""Reward-model losses: LLaMA 2's margin ranking loss, the safety auxiliary term, centering, regression.

All functions take raw scalar scores (logits) as tensors and return a scalar mean loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from saferounds.core.records import RATINGS

# LLaMA 2 Table 27: margin m(r) per preference rating; "none" is the plain Bradley-Terry loss.
MARGINS: dict[str, dict[str, float]] = {
    "none": {r: 0.0 for r in RATINGS},
    "small": {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3,
              "negligibly_better": 0.0, "unsure": 0.0},
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0,
              "negligibly_better": 0.0, "unsure": 0.0},
}

# safety_label -> (chosen is safe, rejected is safe); pairs with chosen unsafe & rejected safe are dropped upstream.
SAFETY_TARGETS: dict[str, tuple[float, float]] = {
    "chosen_safe_rejected_unsafe": (1.0, 0.0),
    "both_safe": (1.0, 1.0),
    "both_unsafe": (0.0, 0.0),
}


def pair_margin(pair: dict, scale: str = "small") -> float:
    """Margin for one preference record: an explicit `margin` overrides the rating; no rating -> 0."""
    if pair.get("margin") is not None:
        return float(pair["margin"])
    rating = pair.get("rating")
    if rating is None:
        return 0.0
    return MARGINS[scale][rating]


def ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    # LLaMA 2 Eq. 2: L = -log sigma(r(x,y_c) - r(x,y_r) - m(r)); logsigmoid keeps it finite for any gap.
    margin = torch.as_tensor(margin, dtype=chosen.dtype, device=chosen.device)
    return -F.logsigmoid(chosen - rejected - margin).mean()


def safety_loss(scores: torch.Tensor, is_safe: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Auxiliary safe/unsafe term (LLaMA 2 Sec. 3.2.2 / Table 29): BCE on sigma(score) so sigma < 0.5 means unsafe.

    `mask` (bool) selects the responses that carry a label; with none selected the loss is 0 (keeps the graph).
    """
    per = F.binary_cross_entropy_with_logits(scores, is_safe.to(scores.dtype), reduction="none")
    if mask is None:
        return per.mean()
    mask = mask.to(scores.dtype)
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def centering_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Reward centering (Eisenstein et al. 2023, as in TRL): mean((r_c + r_r)^2) pulls scores towards zero mean."""
    return ((chosen + rejected) ** 2).mean()


def regression_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(sample, reward) regression for ranking-derived scores (Elo on the logit scale): mean squared error."""
    return F.mse_loss(scores, targets.to(scores.dtype))
