"""The network PPO trains and the forward passes over it: the policy with its value function as one
module (one DDP wrapper), the response's logits and values, and log pi_0 from the reference policy.

Positions: a prompt (left-padded, B x Q) followed by its response (right-padded, B x T); the logits
that predict response token t sit at position Q + t - 1, so a pass keeps the last T + 1 positions
and drops the final one.

Frozen lower layers (LoRA on the top layers only, `model.lora.layers`): the embeddings and the layers
below the first adapter have no trainable weight, so their output over prompt + response is the same
for pi_theta and pi_0 and stays the same through the whole PPO step. The rollout computes it once
(`reference_pass`, which runs pi_0's top layers on it), and every mini-batch forward/backward of the
PPO epochs starts from it (`PolicyAndValue.forward(frozen=...)`) instead of running all layers again.
The numbers are those of a full pass up to float rounding (the same layers on the same inputs).
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
        # lowest layers without a trainable weight (0: none, or a layout we do not split)
        self.frozen_depth = frozen_depth(policy) if critic is None else 0
        if critic is None:
            self.value_head = nn.Linear(policy.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no spurious advantages
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, keep: int, frozen=None):
        """(logits, values) of the last `keep` positions. `frozen`: the output of the frozen lower
        layers over the same positions (`reference_pass`); only the layers above them run."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False)
        if frozen is not None:
            kwargs = {**kwargs, "input_ids": None, "inputs_embeds": frozen}
            with only_layers(decoder_of(self.policy), slice(self.frozen_depth, None)):
                out = self.policy(**kwargs, output_hidden_states=True, logits_to_keep=keep)
            return out.logits, self.value_head(out.hidden_states[-1][:, -keep:].float()).squeeze(-1)
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


def forward_response(model, q_ids, q_mask, r_ids, r_mask, temperature: float, frozen=None):
    """(response logits / T, values) at the positions that predict each response token; `frozen`: the
    frozen lower layers' output over prompt + response (B, Q + T, H), or None for a full pass."""
    ids, attn, pos = _joined(q_ids, q_mask, r_ids, r_mask)
    logits, values = model(ids, attn, pos, keep=r_ids.shape[1] + 1, frozen=frozen)
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


def decoder_of(policy):
    """The decoder stack (embed_tokens, layers, norm) of a causal LM, through a peft wrapper; None when
    the model is not laid out that way."""
    base = policy.get_base_model() if is_peft(policy) else policy
    inner = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return None
    return inner


def frozen_depth(policy) -> int:
    """How many of the lowest decoder layers, embeddings included, hold no trainable weight: 0 when the
    embeddings train, every layer trains, or the model is not a plain decoder stack."""
    inner = decoder_of(policy)
    if inner is None or any(p.requires_grad for p in inner.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(inner.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return 0


@contextlib.contextmanager
def only_layers(inner, part: slice, final_norm: bool = True):
    """Run the decoder stack with only `part` of its layers (and without its final norm when asked)."""
    layers, norm = inner.layers, inner.norm
    inner.layers = nn.ModuleList(list(layers)[part])
    if not final_norm:
        inner.norm = nn.Identity()
    try:
        yield
    finally:
        inner.layers, inner.norm = layers, norm


@torch.no_grad()
def reference_pass(ref, unwrapped: PolicyAndValue, q_ids, q_mask, r_ids, r_mask, temperature):
    """(log pi_0 of each response token, the frozen lower layers' output over prompt + response or None).
    With frozen lower layers and pi_0 = the policy with its adapter off, those layers run once here and
    only the layers above them run for pi_0; the output is kept for the PPO epochs."""
    depth = unwrapped.frozen_depth
    if ref is not None or not depth:
        return reference_logprobs(ref, unwrapped, q_ids, q_mask, r_ids, r_mask, temperature), None
    ids, attn, pos = _joined(q_ids, q_mask, r_ids, r_mask)
    inner = decoder_of(unwrapped.policy)
    with only_layers(inner, slice(0, depth), final_norm=False):
        frozen = inner(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    with unwrapped.policy.disable_adapter(), only_layers(inner, slice(depth, None)):
        logits = unwrapped.policy(inputs_embeds=frozen, attention_mask=attn, position_ids=pos, use_cache=False,
                                  logits_to_keep=r_ids.shape[1] + 1).logits
    return logprobs_of(logits[:, :-1].float() / temperature, r_ids), frozen


def cat_frozen(parts: list, q_widths: list[int], q_width: int, r_width: int):
    """One (B, q_width + r_width, H) tensor from the chunks' frozen outputs (each Q_c + T_c wide): the
    prompt part left-padded, the response part right-padded, with zeros (masked positions). None if any is."""
    if any(p is None for p in parts):
        return None
    out = []
    for p, q in zip(parts, q_widths):
        r = p.shape[1] - q
        out.append(nn.functional.pad(p.transpose(1, 2), (q_width - q, r_width - r)).transpose(1, 2))
    return torch.cat(out)
