"""YAML section `rejection_sampling`: best-of-K sampling, selection and the rs fine-tune (torch-free).

Every field has a docstring (the string right under it); README's configuration table is generated
from them (pipeline/config_doc.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union


@dataclass
class RSFinetuneConfig:
    """Fine-tuning the policy on selected.jsonl (through the SFT code path; other settings from `sft`)."""
    epochs: float = field(default=1.0, metadata={"min": 0.0})
    """Passes over the selected samples."""
    learning_rate: float = field(default=1e-5, metadata={"min": 0.0})
    """Peak learning rate."""
    batch_size: int = field(default=8, metadata={"min": 1})
    """Examples per device step."""


@dataclass
class RejectionSamplingConfig:
    """YAML section `rejection_sampling` (LLaMA 2 Sec. 3.2.3)."""
    k: int = field(default=4, metadata={"min": 1})
    """Samples per prompt."""
    temperature: Union[float, list[float], str] = 1.0
    """A number; a list with one entry per round (v1 takes the first, the last repeats); or `auto`: sweep
    `auto_temperatures` on a held-out slice and keep the best mean max-of-K score (LLaMA 2 Fig. 8)."""
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    """Nucleus sampling."""
    max_new_tokens: int = field(default=128, metadata={"min": 1})
    """Longest sampled response."""
    batch_size: int = field(default=8, metadata={"min": 1})
    """Prompts per generate call (each with k sequences)."""
    pool: Literal["all", "previous", "current"] = "all"
    """Candidates for best-of-K: this round's samples plus the kept samples of every earlier version (`all`,
    LLaMA 2's fix for the RLHF-V3 regression), of the previous version only, or none (`current`)."""
    min_score: Optional[float] = None
    """Drop prompts whose best whitened gated score R~ is below this."""
    auto_temperatures: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.4])
    """The temperatures the `auto` sweep tries."""
    auto_prompts: int = field(default=16, metadata={"min": 1})
    """Size of the sweep's held-out slice."""
    auto_k: Optional[int] = field(default=None, metadata={"min": 1})
    """Samples per prompt in the sweep (default: k)."""
    finetune: RSFinetuneConfig = field(default_factory=RSFinetuneConfig)
    """The fine-tune on the selected samples."""
    reward: Union[str, list[str]] = "rm"
    """What ranks the K samples: `rm` (the gated reward models) or `judge` (the LLM judge's score as the
    reward: direct AI feedback); a list gives one choice per round, the last repeating."""
    demonstrations: list[str] = field(default_factory=list)
    """Safe demonstrations for prompts of data.prompts (SFT-shaped rows: `prompt_id` or `messages`, and
    `completion`), e.g. Do-Not-Answer's harmless answers to its training-split questions. LLaMA 2 starts
    safety tuning from such demonstrations (Sec. 4.2.2); a policy that almost never refuses has few safe
    samples for best-of-K to find."""
    demonstrations_use: Literal["pool", "finetune"] = "pool"
    """`pool`: each demonstration joins its prompt's K samples as one more candidate, scored by this
    round's RMs and gate like the others, so it is kept only when it beats the policy's own samples;
    `finetune`: demonstrations are added to the fine-tune data as they are (safety SFT)."""

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
