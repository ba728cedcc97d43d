"""Sampling PPO's responses: chat-formatted prompts, left-padded; one response per prompt from pi_theta
at ppo.temperature / ppo.top_p; the response mask (1 up to and including EOS).

With ppo.rollout_logprobs resolved to `sampling`, the old log-probs log pi_theta(token) and the values
V(s_t) are read off the sampling pass itself (its logits and last hidden states) instead of a second
forward pass; `rollout_from_sampling` decides which, once per run.
"""
from __future__ import annotations

import torch
from torch import nn

from saferounds.pipeline.training.config import PPOConfig
from saferounds.pipeline.training.ppo_math import logprobs_of


def encode_prompts(tokenizer, prompts: list[dict]) -> list[list[int]]:
    """Chat-formatted prompt token ids (the policy answers after the generation prompt)."""
    texts = [tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def response_mask(responses: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after it (generate pads finished rows)."""
    if eos_id is None:
        return torch.ones_like(responses)
    is_eos = (responses == eos_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).long()


def rollout_from_sampling(cfg: PPOConfig, policy) -> bool:
    """ppo.rollout_logprobs: whether old log-probs and values come from the sampling pass (see the config)."""
    if cfg.rollout_logprobs != "auto":
        return cfg.rollout_logprobs == "sampling"
    quantised = getattr(policy, "is_quantized", False) or getattr(policy, "is_loaded_in_4bit", False) \
        or getattr(policy, "is_loaded_in_8bit", False)
    dtypes = {p.dtype for p in policy.parameters() if p.is_floating_point()}
    return cfg.value_model == "head" and not quantised and dtypes == {torch.float32}


@torch.no_grad()
def generate(policy, q_ids, q_mask, cfg: PPOConfig, pad_id: int,
             eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses (B, R) and their mask; R is the longest response in the batch."""
    responses, mask, _, _ = _sample(policy, q_ids, q_mask, cfg, pad_id, eos_id)
    return responses, mask


@torch.no_grad()
def generate_scored(unwrapped, q_ids, q_mask, cfg: PPOConfig, pad_id: int, eos_id: int | None):
    """Sample responses with their old log-probs log pi(token) at cfg.temperature and values V(s_t),
    both taken from the sampling pass (ppo.rollout_logprobs: sampling): (responses, mask, logprobs, values).
    `unwrapped`: a ppo_model.PolicyAndValue with a value head."""
    return _sample(unwrapped.policy, q_ids, q_mask, cfg, pad_id, eos_id, value_head=unwrapped.value_head)


def _sample(policy, q_ids, q_mask, cfg: PPOConfig, pad_id: int, eos_id: int | None,
            value_head: nn.Module | None = None):
    was_training = policy.training
    policy.eval()  # KV cache on, even with gradient checkpointing
    scored = value_head is not None
    out = policy.generate(input_ids=q_ids, attention_mask=q_mask, do_sample=True,
                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p, top_k=0,
                          pad_token_id=pad_id, eos_token_id=eos_id, return_dict_in_generate=True,
                          output_logits=scored, output_hidden_states=scored)
    policy.train(was_training)
    responses = out.sequences[:, q_ids.shape[1]:]
    mask = response_mask(responses, eos_id)
    width = max(int(mask.sum(1).max()), 1)
    responses, mask = responses[:, :width], mask[:, :width]
    responses = responses.masked_fill(mask == 0, pad_id)
    if not scored:
        return responses, mask, None, None
    # step t's raw logits predict token t; its last hidden state (the prompt's last position at step 0) is s_t
    logits = torch.stack(out.logits[:width], 1).float() / cfg.temperature
    hidden = torch.cat([out.hidden_states[0][-1][:, -1:]] + [h[-1] for h in out.hidden_states[1:width]], 1)
    values = value_head(hidden.float()).squeeze(-1)
    return responses, mask, logprobs_of(logits, responses), values
