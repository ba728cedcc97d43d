"""Scoring glue: every sample gets both reward models' raw scores and the gated score (LLaMA 2
Sec. 3.2.3), or, with `rejection_sampling.reward: judge`, the LLM judge's score (direct AI feedback).

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
  judge_score           the LLM judge's score in [0, 1], None when its verdict stayed unparseable
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from saferounds.core.finite import check_scores
from saferounds.core.maths import sigmoid
from saferounds.reward_models.config import GateConfig
from saferounds.reward_models.gating import gated_reward
from saferounds.reward_models.scoring import score_both


def add_rm_scores(samples: list[dict], helpfulness_rm, safety_rm, batch_size: int = 16,
                  max_length: int = 512) -> None:
    """Raw scores of both RMs, each a (model, tokenizer) pair scoring with its own tokenizer; when both are
    LoRA on the same backbone, the blocks below their adapters run once per batch (score_both)."""
    prompts = [s["messages"] for s in samples]
    responses = [s["response"] for s in samples]
    both = score_both([helpfulness_rm, safety_rm], prompts, responses, batch_size=batch_size, max_length=max_length)
    for field, got in zip(("helpfulness", "safety"), both):
        values = [float(v) for v in got]
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


def judge_score_samples(samples: list[dict], judge_cfg, cache_path: Path) -> None:
    """Direct AI feedback: the LLM judge's score as each sample's reward (`judge_score`). Cached in
    cache_path, so a resumed round pays nothing twice."""
    from saferounds.reward_models.feedback.judges import make_judge
    from saferounds.reward_models.feedback.labeling import judge_scores

    with make_judge(judge_cfg, cache_path=cache_path) as judge:
        scores = judge_scores(judge, samples, [s["response"] for s in samples])
    for s, v in zip(samples, scores):
        s["judge_score"] = v


class RoundScorer:
    """What ranks one round's samples: the gated reward models ("rm") or the LLM judge ("judge").

    `key` is the selection key (gated_score, or judge_score); `curve_key` the score of the max-of-K
    curves and the temperature sweep (gated_logit: one scale across temperatures; or judge_score).
    The reward models are loaded on first use by `load_rms() -> {kind: (model, tokenizer)}` and kept
    until `release()`; a round that finds every candidate scored never loads them."""

    def __init__(self, reward: str, *, gate: GateConfig, load_rms: Callable[[], dict], batch_size: int,
                 max_length: int, judge_cfg=None, judge_cache: Path | None = None):
        self.reward, self.gate, self.load_rms = reward, gate, load_rms
        self.batch_size, self.max_length = batch_size, max_length
        self.judge_cfg, self.judge_cache = judge_cfg, judge_cache
        self.key, self.curve_key = ("gated_score", "gated_logit") if reward == "rm" else ("judge_score", "judge_score")
        self._rms: dict | None = None

    def __call__(self, samples: list[dict]) -> None:
        """Score `samples` in place, all together (one whitening of the gated score)."""
        if self.reward == "judge":
            judge_score_samples(samples, self.judge_cfg, self.judge_cache)
            return
        if self._rms is None:
            self._rms = self.load_rms()
        score_samples(samples, self._rms["helpfulness"], self._rms["safety"], self.gate,
                      batch_size=self.batch_size, max_length=self.max_length)

    def for_curves(self, samples: list[dict]) -> list[dict]:
        """Curves and the sweep rank a missing judge verdict lowest (0.0); other samples unchanged."""
        key = self.curve_key
        return [s if s.get(key) is not None else {**s, key: 0.0} for s in samples]

    def score_for_sweep(self, samples: list[dict]) -> None:
        """Score, then fill missing verdicts as `for_curves` does (the sweep reads curve_key)."""
        self(samples)
        samples[:] = self.for_curves(samples)

    def release(self) -> None:
        """Drop the reward models (the caller frees the accelerator memory)."""
        self._rms = None
