"""Training a helpfulness or safety reward model on transformers.Trainer (TRL style: config beside trainer).

LLaMA 2 Sec. 3.2.2: margin ranking loss (Eq. 2, Table 27), one epoch, cosine schedule down to 10% of the
peak learning rate with 3% warm-up, and the data mix of Table 6 / Sec. 3.2.2 (helpfulness RM: all
helpfulness pairs + an equal amount of safety pairs; safety RM: safety pairs mixed 90/10 with helpfulness).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RewardModelConfig:
    """YAML section `reward_models` (the backbone, dtype, LoRA and quantisation come from `model`)."""
    objective: Literal["pairwise", "regression"] = "pairwise"
    margin: Literal["none", "small", "large"] = "small"  # LLaMA 2 Table 27
    # Weight of the auxiliary safe/unsafe BCE term (Table 29), per RM kind: on for safety, off for helpfulness.
    safety_term_weight: float = field(default=1.0, metadata={"min": 0.0})
    helpfulness_safety_term_weight: float = field(default=0.0, metadata={"min": 0.0})
    center_rewards: float = field(default=0.0, metadata={"min": 0.0})  # coefficient of mean((r_c + r_r)^2)
    # Data mix: safety pairs sampled per helpfulness pair for the helpfulness RM (LLaMA 2: 1.0) ...
    helpfulness_safety_ratio: float = field(default=1.0, metadata={"min": 0.0})
    # ... and the share of helpfulness pairs in the safety RM's mix (LLaMA 2: 90/10 -> 0.1).
    safety_helpfulness_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 0.99})
    eval_fraction: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5})  # held out by prompt
    learning_rate: float = field(default=1e-5, metadata={"min": 0.0})
    batch_size: int = field(default=8, metadata={"min": 1})  # pairs per device step
    gradient_accumulation_steps: int = field(default=1, metadata={"min": 1})
    epochs: float = field(default=1.0, metadata={"min": 0.0})
    warmup_ratio: float = field(default=0.03, metadata={"min": 0.0, "max": 1.0})
    min_warmup_steps: int = field(default=5, metadata={"min": 0})
    min_lr_ratio: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})
    max_length: int = field(default=512, metadata={"min": 8})
    group_by_length: bool = True
    save_steps: int = field(default=200, metadata={"min": 1})
    logging_steps: int = field(default=10, metadata={"min": 1})
    score_batch_size: int = field(default=16, metadata={"min": 1})
