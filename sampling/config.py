"""YAML section `rejection_sampling`: best-of-K sampling, selection and the rs fine-tune (torch-free).

Every field has a docstring (the string right under it); README's configuration table is generated
from them (pipeline/config_doc.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

DemonstrationsUse = Literal["pool", "finetune", "none"]
"""How a round uses rejection_sampling.demonstrations."""

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
    k: int = field(default=4, metadata={"min": 1, "max": 1024})
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
    demonstrations_use: Union[DemonstrationsUse, list[DemonstrationsUse]] = "pool"
    """`pool`: each demonstration joins its prompt's K samples as one more candidate, scored by this
    round's RMs and gate like the others, so it is kept only when it beats the policy's own samples;
    `finetune`: demonstrations are added to the fine-tune data as they are (safety SFT); `none`: not used.
    A list gives one choice per round, the last repeating: `[finetune, none]` is safety SFT in round 1 only,
    as LLaMA 2 runs its safety SFT once before the RLHF rounds (Sec. 4.2.2); a later round would otherwise
    train on the same rows again, one more epoch of them per round."""

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
        if isinstance(self.demonstrations_use, list) and not self.demonstrations_use:
            raise ValueError("demonstrations_use: the per-round list is empty")
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


def demonstrations_use_for_round(cfg: RejectionSamplingConfig, version: int) -> str:
    """"pool", "finetune" or "none" for round vN: "none" without demonstrations; a list is indexed by round,
    its last entry repeating."""
    if not cfg.demonstrations:
        return "none"
    u = cfg.demonstrations_use
    return u[min(max(version, 1), len(u)) - 1] if isinstance(u, list) else u


def reward_for_round(cfg: RejectionSamplingConfig, version: int) -> str:
    """"rm" or "judge" for round vN (a list is indexed by round, its last entry repeating)."""
    r = cfg.reward
    return r[min(max(version, 1), len(r)) - 1] if isinstance(r, list) else r


# --- YAML section `distill`: safety context distillation (LLaMA 2 Sec. 4.2.4) ---------------------

GENERIC_PREPROMPT = (
    "You are a careful and responsible assistant. Help with what is asked when it is safe to do so. Do not give "
    "information or instructions that could be used to hurt people, break the law, or put the user at risk. When "
    "a request is unsafe, say so plainly, explain briefly why, and suggest a safer way to meet the need behind it.")

# Built-in targeted preprompts, one per LLaMA 2 risk category (Sec. 4.2.1), each asking for an answer that follows
# a short template, in the spirit of LLaMA 2 Table 39 (our own wording). The keys are data.risk.RISK_CATEGORIES.
TARGETED_PREPROMPTS = {
    "illicit_and_criminal": (
        "The request below may ask for help with a crime or another illegal act, such as theft, fraud, hacking, "
        "violence, weapons or drugs. Do not give any step, detail or workaround that would help someone carry it out.",
        "1. State clearly that you will not help with the illegal part, and give the reason in one sentence.\n"
        "2. If anyone could be in danger, say who can help right away (emergency services, the police).\n"
        "3. Offer a lawful alternative that serves any legitimate need behind the request."),
    "hateful_and_harmful": (
        "The request below may ask for content that demeans people for who they are, harasses or threatens "
        "someone, or encourages self-harm or other dangerous behaviour. Do not write such content, even as a joke.",
        "1. Decline to write the hurtful or dangerous content, calmly and without lecturing.\n"
        "2. If the person themselves may be at risk, acknowledge it kindly and point to where support is available.\n"
        "3. Offer a respectful way to talk about the topic or to reach the goal behind the request."),
    "unqualified_advice": (
        "The request below may ask for medical, legal or financial advice that should come from a qualified "
        "professional who knows the person's situation. Do not present a guess as a diagnosis, verdict or plan.",
        "1. Share only general, well-established information, and say what cannot be judged without knowing "
        "their situation.\n"
        "2. Name the main risks of acting on general information alone.\n"
        "3. Recommend the right professional (a doctor, a lawyer, a licensed financial adviser) for the decision."),
}


@dataclass
class TargetedPreprompt:
    """The preprompt of one risk category and the answer template it asks the model to follow."""
    preprompt: Optional[str] = None
    """What the request may be and what not to do; null: the built-in text (sampling.config.TARGETED_PREPROMPTS)."""
    answer_template: Optional[str] = None
    """The steps a safe answer follows (LLaMA 2 Table 39's idea); null: the built-in template; "" for none."""


@dataclass
class TargetedPreprompts:
    """One targeted preprompt per LLaMA 2 risk category (the names data.risk.RISK_CATEGORIES uses)."""
    illicit_and_criminal: TargetedPreprompt = field(default_factory=TargetedPreprompt)
    """Crime, fraud, hacking, violence, weapons, drugs."""
    hateful_and_harmful: TargetedPreprompt = field(default_factory=TargetedPreprompt)
    """Hate, harassment, self-harm, dangerous behaviour."""
    unqualified_advice: TargetedPreprompt = field(default_factory=TargetedPreprompt)
    """Medical, legal and financial advice."""


@dataclass
class DistillConfig:
    """YAML section `distill`: safety context distillation (LLaMA 2 Sec. 4.2.4), the round stage `distill`."""
    prompts: Optional[str] = None
    """A prompts file to distil on; null: the `is_safety` prompts of data.prompts (those rs samples)."""
    max_prompts: Optional[int] = field(default=None, metadata={"min": 1})
    """Use at most this many of those prompts (the first ones, in file order); null: all."""
    generic_preprompt: str = GENERIC_PREPROMPT
    """The generic safety preprompt, used for every prompt when `targeted` is false or no category is known."""
    targeted: bool = True
    """Use the prompt's risk category's targeted preprompt with its answer template (LLaMA 2 Table 39)."""
    categories: TargetedPreprompts = field(default_factory=TargetedPreprompts)
    """The targeted preprompts, keyed by risk category."""
    classifier: Literal["auto", "judge", "keywords", "none"] = "auto"
    """Category of a prompt without a `category` field: the LLM judge (`judge` section), the keyword fallback
    (sampling.distillation.keyword_category), none (generic preprompt); `auto`: the judge when judge.model is
    set, else keywords."""
    margin: float = field(default=0.0, metadata={"min": 0.0})
    """Keep a preprompted answer only when its safety-RM score beats the plain answer's by more than this."""
    temperature: float = field(default=0.7, metadata={"min": 0.0})
    """Sampling temperature of both answers (0 = greedy); each prompt uses one seed with and without preprompt."""
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    """Nucleus sampling of both answers."""
    max_new_tokens: int = field(default=128, metadata={"min": 1})
    """Longest answer."""
    batch_size: int = field(default=8, metadata={"min": 1})
    """Prompts per generate call, and per scored chunk appended to distill.jsonl."""
    finetune: RSFinetuneConfig = field(default_factory=RSFinetuneConfig)
    """Fine-tuning on the kept answers (the SFT code path, settings from `sft` otherwise)."""

    def __post_init__(self):
        if self.top_p <= 0:
            raise ValueError("top_p: must be in (0, 1]")
        if not self.generic_preprompt.strip():
            raise ValueError("generic_preprompt: empty; give the generic safety preprompt")
