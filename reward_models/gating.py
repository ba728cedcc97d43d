"""The gated combined score of LLaMA 2 (Sec. 3.2.3, the R_c and R~_c defined under Eq. 4) and its
running whitening for PPO.

R_c = R_s if is_safety(prompt) or R_s < threshold else R_h   (on the sigmoid scale)
R~  = whiten(logit(R_c))
(Eq. 4 itself is the PPO reward R = R~_c - beta * KL: pipeline/training/ppo_math.py.)
"""
from __future__ import annotations

from typing import Callable

import torch

from saferounds.core.maths import whiten
from saferounds.reward_models.config import GateConfig


class RunningWhitener:
    """Running mean/variance (Chan et al. parallel update) for whitening PPO rewards across batches.

    `update(x)` folds a batch into the statistics; `whiten(x)` whitens with the running values;
    `__call__(x)` does both.
    """

    def __init__(self, eps: float = 1e-8):
        self.eps = eps
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        b_mean = x.mean().item()
        b_m2 = ((x - b_mean) ** 2).sum().item()
        delta = b_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += b_m2 + delta ** 2 * self.count * n / total
        self.count = total

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        return whiten(x, stats=(self.mean, self.var), eps=self.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.update(x)
        return self.whiten(x)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def gated_reward(
    safety_logits,
    helpfulness_logits,
    is_safety,
    threshold: float = 0.15,
    whitening: bool | RunningWhitener = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated score of LLaMA 2 Sec. 3.2.3 (R~_c of Eq. 4). Returns (reward, used_safety).

    reward: whiten(logit(R_c)) per sample (float32); un-whitened logit(R_c) when whitening=False; with a
        RunningWhitener it is whitened by running statistics (which this call updates).
    used_safety: bool per sample, True where the safety branch was taken (safety prompt or sigma(R_s) < threshold).
    sigma is clamped to [eps, 1 - eps] so logit stays finite for scores far in the tails.
    """
    s = torch.as_tensor(safety_logits, dtype=torch.float32).flatten()
    h = torch.as_tensor(helpfulness_logits, dtype=torch.float32).flatten()
    if s.shape != h.shape:
        raise ValueError(f"gated_reward: {s.numel()} safety scores but {h.numel()} helpfulness scores")
    flags = torch.as_tensor(is_safety, dtype=torch.bool).flatten()
    if flags.numel() == 1:
        flags = flags.expand_as(s)
    elif flags.shape != s.shape:
        raise ValueError(f"gated_reward: {flags.numel()} is_safety flags for {s.numel()} samples")
    p_s = torch.sigmoid(s).clamp(eps, 1 - eps)
    p_h = torch.sigmoid(h).clamp(eps, 1 - eps)
    used_safety = flags | (p_s < threshold)
    p_c = torch.where(used_safety, p_s, p_h)
    logit_c = torch.log(p_c) - torch.log1p(-p_c)
    if isinstance(whitening, RunningWhitener):
        return whitening(logit_c), used_safety
    if whitening:
        return whiten(logit_c), used_safety
    return logit_c, used_safety


def gated_score_fn(helpfulness: tuple, safety: tuple, gate: GateConfig, batch_size: int = 16,
                   max_length: int = 512) -> Callable[[list[dict], list[str]], tuple[torch.Tensor, torch.Tensor]]:
    """(prompts, responses) -> (logit(R_c), used_safety) from two (model, tokenizer) RMs; not whitened
    (PPO whitens with running statistics shared by all processes). Two LoRA RMs on one backbone run their
    shared bottom blocks once (reward_models.scoring.score_both)."""
    from saferounds.reward_models.scoring import score_both, shared_trunk_depth

    depth = shared_trunk_depth(helpfulness, safety)  # once: the RMs are frozen, their weights do not change

    def score_fn(prompts: list[dict], responses: list[str]):
        messages = [p["messages"] for p in prompts]
        h, s = score_both([helpfulness, safety], messages, responses, batch_size=batch_size, max_length=max_length,
                          depth=depth)
        return gated_reward(s, h, [bool(p.get("is_safety", False)) for p in prompts],
                            threshold=gate.threshold, whitening=False, eps=gate.eps)
    return score_fn
