"""The network PPO trains and the forward passes over it: the policy with its value function as one
module (one DDP wrapper), the response's logits and values, and log pi_0 from the reference policy.

Positions: a prompt (left-padded, B x Q) followed by its response (right-padded, B x T); the logits
that predict response token t sit at position Q + t - 1, so a pass keeps the last T + 1 positions
and drops the final one.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from saferounds.pipeline.training.ppo_math import logprobs_of


class PolicyAndValue(nn.Module):
    """One module for DDP: the policy plus its value function (a head on the policy, or a critic
    that is any *ForSequenceClassification model, used per token through its `score` layer)."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        if critic is None:
            self.value_head = nn.Linear(policy.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no spurious advantages
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, keep: int):
        """(logits, values) of the last `keep` positions."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False)
        if self.critic is None:
            out = self.policy(**kwargs, output_hidden_states=True, logits_to_keep=keep)
            values = self.value_head(out.hidden_states[-1][:, -keep:].float()).squeeze(-1)
        else:
            out = self.policy(**kwargs, logits_to_keep=keep)
            backbone = getattr(self.critic, self.critic.base_model_prefix)
            hidden = backbone(**kwargs).last_hidden_state[:, -keep:]
            values = self.critic.score(hidden).float().squeeze(-1)
        return out.logits, values


def disable_dropout(model: nn.Module) -> None:
    """PPO ratios compare two forward passes; dropout would make them differ at ratio 1."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def trim(q_ids, q_mask, r_ids, r_mask):
    """Drop columns that are padding in every row (left of the prompts, right of the responses)."""
    q_start = int((q_mask.sum(0) > 0).nonzero()[0]) if q_mask.any() else 0
    r_end = max(int((r_mask.sum(0) > 0).nonzero()[-1]) + 1, 1) if r_mask.any() else 1
    return q_ids[:, q_start:], q_mask[:, q_start:], r_ids[:, :r_end], r_mask[:, :r_end]


def _joined(q_ids, q_mask, r_ids, r_mask):
    """Prompt + response ids, attention mask, and position ids that skip the left padding."""
    ids = torch.cat([q_ids, r_ids], 1)
    attn = torch.cat([q_mask, r_mask], 1)
    return ids, attn, (attn.cumsum(1) - 1).clamp(min=0)


def forward_response(model, q_ids, q_mask, r_ids, r_mask, temperature: float):
    """(response logits / T, values) at the positions that predict each response token."""
    ids, attn, pos = _joined(q_ids, q_mask, r_ids, r_mask)
    logits, values = model(ids, attn, pos, keep=r_ids.shape[1] + 1)
    return logits[:, :-1].float() / temperature, values[:, :-1]


@torch.no_grad()
def reference_logprobs(ref, unwrapped: PolicyAndValue, q_ids, q_mask, r_ids, r_mask, temperature):
    """log pi_0(token) of each response token; `ref` None means pi_0 is the policy with its LoRA
    adapter switched off."""
    ids, attn, pos = _joined(q_ids, q_mask, r_ids, r_mask)
    if ref is None:
        ctx, model = unwrapped.policy.disable_adapter(), unwrapped.policy
    else:
        ctx, model = contextlib.nullcontext(), ref
    with ctx:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                       logits_to_keep=r_ids.shape[1] + 1).logits
    return logprobs_of(logits[:, :-1].float() / temperature, r_ids)
