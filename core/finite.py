"""Non-finite detection for every training stage: losses, gradient norms, saved weights and scores.

A run that diverges (NaN or Inf anywhere) must fail its stage with `DivergedError` naming the stage and
the step, never finish a version whose policy is all NaN. One norm over all tensors is one pass and one
device sync: it is NaN when any element is NaN and Inf when any is Inf (or when finite values overflow,
which is divergence too).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from saferounds.core.errors import DivergedError


def total_norm(tensors: Iterable[torch.Tensor]) -> float:
    """The 2-norm over all tensors (0.0 for none), computed in float32."""
    norms = [t.detach().float().norm() for t in tensors if t is not None and t.numel()]
    if not norms:
        return 0.0
    return float(torch.stack([n.to(norms[0].device) for n in norms]).norm())


def check_value(value, stage: str, step: int | None, what: str) -> None:
    """Raise DivergedError when a scalar (float or tensor) is NaN or Inf."""
    if value is None:
        return
    v = float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise DivergedError(stage, step, f"{what} ({v})")


def check_gradients(model, stage: str, step: int | None) -> None:
    check_value(total_norm(p.grad for p in model.parameters() if p.grad is not None), stage, step, "the gradient norm")


def check_weights(model, stage: str, step: int | None = None) -> None:
    """Every parameter is finite (before a model is saved, and after optimizer steps)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise DivergedError(stage, step, f"{len(bad)} weight tensor(s), e.g. {bad[0]},")


def check_scores(scores, stage: str, what: str = "a reward-model score") -> None:
    """Scores used to select or judge samples are all finite (NaN never wins a best-of-K)."""
    bad = [i for i, s in enumerate(scores) if s is None or not math.isfinite(float(s))]
    if bad:
        raise DivergedError(stage, None, f"{what} of {len(bad)} of {len(scores)} sample(s) (first: #{bad[0]})")


def finite_callback(stage: str):
    """A transformers TrainerCallback that fails the run at the first non-finite gradient norm (checked
    before the optimizer step, so NaN never reaches the weights), logged loss, or weight after a step."""
    from transformers import TrainerCallback

    class FiniteCallback(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if model is not None:
                check_gradients(model, stage, state.global_step + 1)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is not None:
                check_value(total_norm(p for p in model.parameters() if p.requires_grad), stage,
                            state.global_step, "the weight norm")

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                if logs and isinstance(logs.get(key), (int, float)):
                    check_value(logs[key], stage, state.global_step, f"the {key.replace('_', ' ')}")

    return FiniteCallback()
