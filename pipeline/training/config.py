"""YAML sections `pretrain`, `sft` (TrainConfig) and `ppo` (PPOConfig): torch-free dataclasses.

Every field has a docstring (the string right under it); README's configuration table is generated
from them (pipeline/config_doc.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class TrainConfig:
    """A supervised stage on transformers.Trainer (`pretrain`, `sft`; the rs fine-tune starts from `sft`)."""
    epochs: float = field(default=2.0, metadata={"min": 0.0})
    """Passes over the data."""
    learning_rate: float = field(default=2e-5, metadata={"min": 0.0})
    """Peak learning rate."""
    batch_size: int = field(default=8, metadata={"min": 1})
    """Examples per device step."""
    gradient_accumulation_steps: int = field(default=1, metadata={"min": 1})
    """Device steps per optimiser step."""
    max_length: int = field(default=512, metadata={"min": 8})
    """Tokens per example (longer ones are cut)."""
    warmup_ratio: float = field(default=0.03, metadata={"min": 0.0, "max": 1.0})
    """Share of the run spent warming up the learning rate."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after the warm-up."""
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    """AdamW weight decay."""
    save_steps: int = field(default=200, metadata={"min": 1})
    """Checkpoint every N optimiser steps (an interrupted run resumes from the last)."""
    logging_steps: int = field(default=10, metadata={"min": 1})
    """Log the loss every N optimiser steps."""


@dataclass
class PPOConfig:
    """YAML section `ppo`. Defaults are LLaMA 2's (Sec. 3.2.3) unless a field says otherwise."""
    steps: int = field(default=200, metadata={"min": 1})
    """PPO iterations (LLaMA 2: 200-400)."""
    batch_size: int = field(default=512, metadata={"min": 1})
    """Prompts per iteration, over all processes."""
    mini_batch_size: int = field(default=64, metadata={"min": 1})
    """Responses per gradient step (one optimiser step each)."""
    ppo_epochs: int = field(default=1, metadata={"min": 1})
    """Passes over each batch."""
    rollout_batch_size: int = field(default=64, metadata={"min": 1})
    """Per process: prompts generated and scored together."""
    learning_rate: float = field(default=1e-6, metadata={"min": 0.0})
    """Constant learning rate."""
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    """AdamW weight decay."""
    adam_beta1: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    """AdamW beta1."""
    adam_beta2: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    """AdamW beta2."""
    adam_eps: float = field(default=1e-5, metadata={"min": 0.0})
    """AdamW epsilon."""
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})
    """Gradient clipping norm (0: off)."""
    beta: float = field(default=0.01, metadata={"min": 0.0})
    """KL coefficient of Eq. 4 (LLaMA 2: 0.01 up to 13B, 0.005 above)."""
    gamma: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    """GAE discount."""
    lam: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    """GAE lambda."""
    clip_ratio: float = field(default=0.2, metadata={"min": 0.0})
    """Clip range of the policy ratio."""
    clip_value: float = field(default=0.2, metadata={"min": 0.0})
    """Clip range of the value update."""
    vf_coef: float = field(default=0.1, metadata={"min": 0.0})
    """Weight of the value loss (not LLaMA 2's: keeps a value head's gradient small next to the policy's)."""
    max_new_tokens: int = field(default=128, metadata={"min": 1})
    """Longest sampled response."""
    temperature: float = field(default=1.0, metadata={"min": 1e-3})
    """Sampling temperature of the rollouts."""
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    """Nucleus sampling of the rollouts."""
    value_model: Literal["head", "critic"] = "head"
    """`head`: a scalar head on the policy (no second model); `critic`: a separate critic started from the
    helpfulness RM, as in InstructGPT (pipeline/training/ppo.py explains the choice)."""
    rollout_logprobs: Literal["auto", "sampling", "forward"] = "auto"
    """Where the rollout's old log-probs and values come from. `forward`: a second no-grad forward of the
    policy over prompt + response after sampling (what TRL and OpenRLHF do). `sampling`: kept from the
    sampling pass itself (the logits and last hidden state of each decode step), which saves that forward;
    exact up to float rounding between a cached decode step and a full forward. `auto`: `sampling` when the
    value model is the head and the policy computes in fp32 (where the rounding is ~1e-6), else `forward`
    (bf16 or quantised policies, whose cached and full passes differ by more)."""
    reference: Literal["v0", "start"] = "start"
    """The KL anchor pi_0: the round's starting checkpoint, or v0."""
    max_kl: Optional[float] = field(default=None, metadata={"min": 0.0})
    """Stop early, with a message naming the step and the KL, when the rollouts' mean KL to the reference
    (nats per response, summed over its tokens) passes this; the last policy before it is kept. null: never."""
    max_refusal_rate: Optional[float] = field(default=None, metadata={"min": 0.0, "max": 1.0})
    """Stop early, with a message, when the refusal patterns flag more than this share of the rollouts the gate
    scored with the helpfulness RM, pooled over the last `refusal_window` steps (at least 8 such rollouts): the
    policy learning to refuse what it should answer, LLaMA 2's false-refusal failure (Sec. 4.2.3, Fig. 33)
    that a safety reward can buy. The last policy before it is kept. null: never."""
    refusal_window: int = field(default=3, metadata={"min": 1})
    """Steps whose helpful-branch rollouts max_refusal_rate pools (one step holds few of them)."""
    kl_stop: Optional[float] = field(default=None, metadata={"min": 0.0})
    """Deprecated alias of max_kl (read as max_kl, with a warning); set max_kl instead."""
    save_every: int = field(default=20, metadata={"min": 1})
    """Checkpoint every N iterations (an interrupted run resumes from the last)."""
    seed: int = 0
    """Seed of prompt order and sampling."""

    def __post_init__(self):
        if self.kl_stop is not None and self.max_kl is not None and self.kl_stop != self.max_kl:
            raise ValueError(f"kl_stop: {self.kl_stop} is the deprecated name of max_kl ({self.max_kl}); "
                             "set max_kl only")

    @property
    def kl_limit(self) -> Optional[float]:
        """The early-stop KL in force: max_kl, else the deprecated kl_stop."""
        return self.max_kl if self.max_kl is not None else self.kl_stop
