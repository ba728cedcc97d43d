"""PPO on the gated reward with a KL penalty to the reference policy (LLaMA 2 Sec. 3.2.3).

Loop under construction; PPOConfig is the YAML section `ppo`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class PPOConfig:
    """YAML section `ppo`. Defaults are LLaMA 2's (Sec. 3.2.3) except where a comment says otherwise."""
    steps: int = field(default=200, metadata={"min": 1})          # PPO iterations (LLaMA 2: 200-400)
    batch_size: int = field(default=512, metadata={"min": 1})     # prompts per iteration, all processes
    mini_batch_size: int = field(default=64, metadata={"min": 1})  # one gradient step each
    ppo_epochs: int = field(default=1, metadata={"min": 1})       # passes over each batch
    rollout_batch_size: int = field(default=64, metadata={"min": 1})  # per process, generation/scoring chunk
    learning_rate: float = field(default=1e-6, metadata={"min": 0.0})  # constant
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    adam_beta1: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    adam_beta2: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    adam_eps: float = field(default=1e-5, metadata={"min": 0.0})
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})
    beta: float = field(default=0.01, metadata={"min": 0.0})      # KL coefficient; 0.005 above 13B
    gamma: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    lam: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    clip_ratio: float = field(default=0.2, metadata={"min": 0.0})
    clip_value: float = field(default=0.2, metadata={"min": 0.0})
    vf_coef: float = field(default=0.1, metadata={"min": 0.0})
    max_new_tokens: int = field(default=128, metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 1e-3})
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    value_model: Literal["head", "critic"] = "head"  # see the module docstring
    reference: Literal["v0", "start"] = "start"       # the KL anchor pi_0
    kl_stop: Optional[float] = field(default=None, metadata={"min": 0.0})  # early stop when mean KL passes it
    save_every: int = field(default=20, metadata={"min": 1})
    seed: int = 0
