"""YAML section `rejection_sampling`: best-of-K sampling, selection and the rs fine-tune."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union


@dataclass
class RSFinetuneConfig:
    """Fine-tuning the policy on selected.jsonl (through the SFT code path)."""
    epochs: float = field(default=1.0, metadata={"min": 0.0})
    learning_rate: float = field(default=1e-5, metadata={"min": 0.0})
    batch_size: int = field(default=8, metadata={"min": 1})


@dataclass
class RejectionSamplingConfig:
    """YAML section `rejection_sampling` (LLaMA 2 Sec. 3.2.3)."""
    k: int = field(default=4, metadata={"min": 1, "max": 1024})  # samples per prompt
    # A number; a list with one entry per round (v1 takes the first, the last repeats); or "auto":
    # sweep `auto_temperatures` on a held-out slice and keep the best mean max-of-K score (LLaMA 2 Fig. 8).
    temperature: Union[float, list[float], str] = 1.0
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    max_new_tokens: int = field(default=128, metadata={"min": 1})
    batch_size: int = field(default=8, metadata={"min": 1})  # prompts per generate call (x k sequences)
    # Candidates for best-of-K: this round's samples plus the kept samples of every earlier version
    # ("all", LLaMA 2's fix for the RLHF-V3 regression), of the previous version only, or none.
    pool: Literal["all", "previous", "current"] = "all"
    min_score: Optional[float] = None  # drop prompts whose best whitened gated score R~ is below this
    auto_temperatures: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.4])
    auto_prompts: int = field(default=16, metadata={"min": 1})  # size of the sweep's held-out slice
    auto_k: Optional[int] = field(default=None, metadata={"min": 1})  # samples per prompt in the sweep (k)
    finetune: RSFinetuneConfig = field(default_factory=RSFinetuneConfig)
    # What ranks the K samples: "rm" (the gated reward models, Eq. 4) or "judge" (the LLM judge's
    # score as the reward: direct AI feedback); a list gives one choice per round, the last repeating.
    reward: Union[str, list[str]] = "rm"

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, str) and t != "auto":
            raise ValueError(f"temperature: expected a number, a list of numbers or 'auto', got {t!r}")
        if isinstance(t, list) and not t:
            raise ValueError("temperature: the per-round list is empty")
        for v in t if isinstance(t, list) else [] if isinstance(t, str) else [t]:
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"temperature: {v!r} must be a number >= 0 (0 = greedy)")
        if any(v <= 0 for v in self.auto_temperatures) or not self.auto_temperatures:
            raise ValueError("auto_temperatures: give at least one temperature, each > 0")
        for r in self.reward if isinstance(self.reward, list) else [self.reward]:
            if r not in ("rm", "judge"):
                raise ValueError(f"reward: expected 'rm' or 'judge' (or a list of them per round), got {r!r}")
        if isinstance(self.reward, list) and not self.reward:
            raise ValueError("reward: the per-round list is empty")
        if self.top_p <= 0:
            raise ValueError("top_p: must be in (0, 1]")


def temperature_for_round(cfg: RejectionSamplingConfig, version: int) -> float | None:
    """The configured temperature of round vN, or None for "auto" (the stage runs the sweep)."""
    t = cfg.temperature
    if isinstance(t, str):
        return None
    if isinstance(t, list):
        return float(t[min(max(version, 1), len(t)) - 1])
    return float(t)


def reward_for_round(cfg: RejectionSamplingConfig, version: int) -> str:
    """"rm" or "judge" for round vN (a list is indexed by round, its last entry repeating)."""
    r = cfg.reward
    return r[min(max(version, 1), len(r)) - 1] if isinstance(r, list) else r
