"""Scoring glue: every sample gets both reward models' raw scores and the gated reward (LLaMA 2 Eq. 4).

Fields added to each sample:
  helpfulness, safety   raw RM scores (logits) from reward_models.scoring.score
  safety_sigmoid        sigma(safety)
  gate_branch           "safety" when the safety RM was used (safety prompt or sigma(R_s) < threshold),
                        else "helpfulness"
  gated_logit           logit(R_c), not whitened: on one scale for a fixed pair of RMs, so means and
                        max-of-K curves compare across temperatures and rounds
  gated_score           R~ = whiten(logit(R_c)) over the samples scored together (the selection key)
Whitening is affine and shared by the batch, so best-of-K over one scored batch picks the same samples
by gated_score as by gated_logit; what matters is that every candidate is scored by the same RMs.
"""
from __future__ import annotations

from typing import Sequence

from core.finite import check_scores
from core.maths import sigmoid
from reward_models.config import GateConfig
from reward_models.gating import gated_reward
from reward_models.scoring import score


def add_rm_scores(samples: list[dict], helpfulness_rm, safety_rm, batch_size: int = 16,
                  max_length: int = 512) -> None:
    """Raw scores of both RMs, each a (model, tokenizer) pair scoring with its own tokenizer."""
    prompts = [s["messages"] for s in samples]
    responses = [s["response"] for s in samples]
    for field, (model, tok) in (("helpfulness", helpfulness_rm), ("safety", safety_rm)):
        values = [float(v) for v in score(model, tok, prompts, responses, batch_size=batch_size,
                                          max_length=max_length)]
        check_scores(values, "scoring", f"the {field} RM's score")  # NaN must never be selected
        for s, v in zip(samples, values):
            s[field] = v


def add_gate(samples: Sequence[dict], gate: GateConfig) -> None:
    """Gate branch, logit(R_c) and R~ (whitened over `samples`) from the stored raw scores."""
    if not samples:
        return
    safety = [s["safety"] for s in samples]
    helpful = [s["helpfulness"] for s in samples]
    flags = [bool(s.get("is_safety", False)) for s in samples]
    logit_c, used_safety = gated_reward(safety, helpful, flags, threshold=gate.threshold, whitening=False, eps=gate.eps)
    whitened, _ = gated_reward(safety, helpful, flags, threshold=gate.threshold, whitening=gate.whiten, eps=gate.eps)
    for s, lc, w, u in zip(samples, logit_c.tolist(), whitened.tolist(), used_safety.tolist()):
        s["safety_sigmoid"] = sigmoid(s["safety"])
        s["gate_branch"] = "safety" if u else "helpfulness"
        s["gated_logit"] = float(lc)
        s["gated_score"] = float(w)


def score_samples(samples: list[dict], helpfulness_rm, safety_rm, gate: GateConfig, batch_size: int = 16,
                  max_length: int = 512) -> list[dict]:
    """add_rm_scores then add_gate over all of `samples` together; returns the same list."""
    add_rm_scores(samples, helpfulness_rm, safety_rm, batch_size, max_length)
    add_gate(samples, gate)
    return samples
