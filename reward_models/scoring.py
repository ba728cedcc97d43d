"""Batched scoring of (prompt messages, response) lists with a reward model's own tokenizer."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def format_sample(tokenizer, prompt: Sequence[dict], response: str) -> str:
    """The text an RM sees: the tokenizer's chat template if it has one, else "User: ...\\nAssistant: ..."."""
    messages = list(prompt) + [{"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def encode(tokenizer, texts: list[str], max_length: int):
    """Tokenize formatted samples; a chat template already wrote its special tokens, so add none twice."""
    add_special = not getattr(tokenizer, "chat_template", None)
    return tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=add_special)


@torch.inference_mode()
def score(model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str], batch_size: int = 16,
          max_length: int = 512, progress: Callable[[int], None] | None = None) -> list[float]:
    """Raw scalar scores (logits), in input order.

    Samples are sorted by text length so each batch pads little; only one batch of tokens and
    activations is alive at a time, so memory stays flat however many samples are scored.
    `progress(n)` is called with the number of samples finished after each batch.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = [sum(len(m["content"]) for m in p) + len(r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(responses)), key=lambda i: lengths[i], reverse=True)  # longest first: OOM early
    out = [0.0] * len(responses)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        texts = [format_sample(tokenizer, prompts[i], responses[i]) for i in idx]
        enc = encode(tokenizer, texts, max_length)
        batch = tokenizer.pad(enc, return_tensors="pt").to(device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i, v in zip(idx, logits[:, 0].float().cpu().tolist()):
            out[i] = v
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    return out
