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


def encode(tokenizer, texts: list[str], max_length: int | None):
    """Tokenize formatted samples; a chat template already wrote its special tokens, so add none twice.

    Over-long samples lose their *first* tokens (the start of the conversation), never the end: what an RM
    judges is the response, and cutting the end of a long dialogue would cut the response away (at 128 tokens
    that made half of HH-RLHF's chosen/rejected pairs identical). max_length None: no truncation."""
    add_special = not getattr(tokenizer, "chat_template", None)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(texts, truncation=max_length is not None, max_length=max_length,
                         add_special_tokens=add_special)
    finally:
        tokenizer.truncation_side = side


@torch.inference_mode()
def score(model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str], batch_size: int = 16,
          max_length: int = 512, progress: Callable[[int], None] | None = None) -> list[float]:
    """Raw scalar scores (logits), in input order.

    Samples are sorted by text length so each batch pads little; only one batch of tokens and
    activations is alive at a time, so memory stays flat however many samples are scored.
    `progress(n)` is called with the number of samples finished after each batch.
    """
    forward = lambda batch: (model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,)  # noqa: E731
    return _score_batches([model], tokenizer, prompts, responses, forward, batch_size, max_length, progress, "score")[0]


def _score_batches(models: list, tokenizer, prompts, responses, forward: Callable, batch_size: int, max_length: int,
                   progress: Callable[[int], None] | None, name: str) -> list[list[float]]:
    """The batching both `score` and `score_both` use: longest samples first (OOM early), one padded batch at a
    time, `forward(batch)` -> one logits tensor per model, scores put back in input order; the models are in
    eval mode meanwhile and return to their mode after."""
    if len(prompts) != len(responses):
        raise ValueError(f"{name}: {len(prompts)} prompts but {len(responses)} responses")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    device = next(models[0].parameters()).device
    lengths = [sum(len(m["content"]) for m in p) + len(r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(responses)), key=lambda i: lengths[i], reverse=True)
    out = [[0.0] * len(responses) for _ in models]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = encode(tokenizer, [format_sample(tokenizer, prompts[i], responses[i]) for i in idx], max_length)
        batch = tokenizer.pad(enc, return_tensors="pt").to(device)
        for k, logits in enumerate(forward(batch)):
            for i, v in zip(idx, logits[:, 0].float().cpu().tolist()):
                out[k][i] = v
        if progress is not None:
            progress(len(idx))
    for m, mode in zip(models, modes):
        m.train(mode)
    return out


# ------------------------------------------------------------------ two RMs on one backbone: the trunk once
# LLaMA 2's two RMs start from the same checkpoint. With LoRA on the top layers only (model.lora.layers),
# both compute the bottom layers identically, so a batch runs them once: the first RM's forward keeps the
# hidden state entering its first adapted layer, the second RM starts from it (its bottom layers skipped).


def decoder_layers(model):
    """The ModuleList of a decoder's transformer blocks (peft wrappers unwrapped), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    layers = getattr(body, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def _first_adapted(layers, model) -> int:
    """Index of the lowest block holding adapter (LoRA) weights; 0 when anything below the blocks has some."""
    outside = [n for n, _ in model.named_parameters() if "lora_" in n and ".layers." not in n]
    if outside:
        return 0
    for i, layer in enumerate(layers):
        if any("lora_" in n for n, _ in layer.named_parameters()):
            return i
    return len(layers)


def _same_tokens(tok_a, tok_b) -> bool:
    return (tok_a is tok_b) or (tok_a.get_vocab() == tok_b.get_vocab() and tok_a.pad_token_id == tok_b.pad_token_id
                                and getattr(tok_a, "chat_template", None) == getattr(tok_b, "chat_template", None)
                                and tok_a.truncation_side == tok_b.truncation_side)


def shared_trunk_depth(a, b) -> int:
    """How many bottom blocks two (model, tokenizer) RMs compute identically: same tokenizer, same
    embedding and block weights, no adapter below that depth. 0 (no sharing) when anything differs."""
    (ma, ta), (mb, tb) = a, b
    la, lb = decoder_layers(ma), decoder_layers(mb)
    if la is None or lb is None or len(la) != len(lb) or not _same_tokens(ta, tb):
        return 0
    depth = min(_first_adapted(la, ma), _first_adapted(lb, mb), len(la) - 1)
    if depth <= 0:
        return 0
    ea, eb = ma.get_input_embeddings(), mb.get_input_embeddings()
    pairs = [(ea, eb)] + [(la[i], lb[i]) for i in range(depth)]
    for x, y in pairs:
        px, py = dict(x.named_parameters()), dict(y.named_parameters())
        if px.keys() != py.keys() or any(not torch.equal(px[k], py[k]) for k in px):
            return 0
    return depth


class _Skip(torch.nn.Module):
    """A block that passes its input through (the shared trunk was computed by the other RM)."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


def _trunk_forward(first, second, depth: int, batch) -> tuple:
    """Logits of both RMs on one batch, the bottom `depth` blocks computed once (by `first`)."""
    la, lb = decoder_layers(first), decoder_layers(second)
    kept: dict = {}

    def keep(module, args, kwargs):
        kept["h"] = args[0] if args else kwargs["hidden_states"]

    def seen(module, args, output):
        kept["tuple"] = isinstance(output, tuple)

    handles = [la[depth].register_forward_pre_hook(keep, with_kwargs=True), la[depth - 1].register_forward_hook(seen)]
    try:
        out_a = first(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        for h in handles:
            h.remove()

    def inject(module, args, kwargs):
        if args:
            return (kept["h"], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kept["h"]}

    bottom = [lb[i] for i in range(depth)]
    handle = lb[depth].register_forward_pre_hook(inject, with_kwargs=True)
    try:
        for i in range(depth):
            lb[i] = _Skip(kept["tuple"])
        out_b = second(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        for i, layer in enumerate(bottom):
            lb[i] = layer
        handle.remove()
    return out_a, out_b


def shared_encoder(a, b) -> bool:
    """Whether two (model, tokenizer) RMs are mean-pooled heads (reward_models.pooled) on one frozen encoder:
    same tokenizer, equal encoder weights. Then a batch runs the encoder once and both heads read its mean."""
    from saferounds.reward_models.pooled import MeanPooledForSequenceClassification

    (ma, ta), (mb, tb) = a, b
    if not (isinstance(ma, MeanPooledForSequenceClassification) and isinstance(mb, MeanPooledForSequenceClassification)
            and _same_tokens(ta, tb)):
        return False
    pa, pb = dict(ma.encoder.named_parameters()), dict(mb.encoder.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _heads_forward(first, second, batch) -> tuple:
    """Logits of two mean-pooled RMs on one encoder pass (shared_encoder)."""
    from saferounds.reward_models.pooled import mean_pool

    mask = batch["attention_mask"]
    pooled = mean_pool(first.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state, mask)
    return (first.score(pooled.to(first.score.weight.dtype)),  # a bf16 backbone may feed an fp32 head
            second.score(pooled.to(second.score.weight.dtype)))


@torch.inference_mode()
def score_both(rms: Sequence[tuple], prompts: Sequence[Sequence[dict]], responses: Sequence[str], batch_size: int = 16,
               max_length: int = 512, depth: int | None = None) -> list[list[float]]:
    """Raw scores of each of two (model, tokenizer) RMs, as `score` gives them, with the shared trunk
    computed once per batch; plain `score` per RM when they share nothing. `depth`: shared_trunk_depth of
    the pair when the caller already knows it (frozen RMs scored again and again, as in PPO)."""
    a, b = rms
    depth = shared_trunk_depth(a, b) if depth is None else depth
    if depth == 0 and shared_encoder(a, b):
        (ma, tok), (mb, _) = a, b
        return _score_batches([ma, mb], tok, prompts, responses, lambda batch: _heads_forward(ma, mb, batch),
                              batch_size, max_length, None, "score_both")
    if depth == 0:
        return [score(m, t, prompts, responses, batch_size=batch_size, max_length=max_length) for m, t in rms]
    (ma, tok), (mb, _) = a, b
    return _score_batches([ma, mb], tok, prompts, responses, lambda batch: _trunk_forward(ma, mb, depth, batch),
                          batch_size, max_length, None, "score_both")
