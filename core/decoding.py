"""Greedy decoding for a batch of chat prompts that share a prefix: the prefix once, finished rows dropped.

`model.generate` (the plain path) prefills every row's whole prompt and keeps decoding rows that have
already stopped until the last row stops. For an evaluation batch both are waste:

- **the shared prefix once.** Every prompt of a chat model's suite starts with the same template text (for
  SmolLM2 the default system prompt and the user header, 25 of ~41 tokens on XSTest), and left padding to
  the longest prompt adds more. The prefix's keys and values are computed for one row and repeated for the
  batch; each row's own suffix is prefilled after it, padded in the middle (`[prefix][pad..][suffix]`, the
  pads masked out and the positions counted over real tokens only), so every row sees exactly the tokens
  and positions it would see alone.
- **finished rows dropped.** Once a row emits an end-of-sequence token its keys and values leave the cache
  (`Cache.batch_select_indices`), so later steps run only the rows still going.
- **the LM head screened** (`screen_head`, on by default for an fp32 Llama-like model where the CPU computes
  bf16 natively): the decoder stack runs alone and core.screened_head finds each row's argmax of the fp32
  logits from a bf16 product, a rigorous error bound and an exact rescoring of the few tokens the bound
  leaves, computing the fp32 head only where it cannot prove the answer: the same tokens as the model's own
  head, at ~7 ms instead of ~44 per 64-row SmolLM2 step.

The tokens are those of `model.generate(do_sample=False)` up to floating point: the matrix products run on
differently shaped batches, so a row whose two best next tokens are within rounding of each other can go
the other way (bench/fast_generate.py measures the share of identical answers). Any decoder-only Hugging
Face model with a `Cache` (`past_key_values`) and `position_ids` qualifies; `supports_fast_greedy` says when a
model does not, and callers then use `generate`.
"""
from __future__ import annotations

from typing import Sequence

import torch

MIN_SHARED_PREFIX = 4  # fewer shared tokens are not worth a separate forward pass


def eos_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the model's generation config (what `generate` stops on), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ValueError("greedy decoding: neither the model's generation config nor the tokenizer names an "
                         "end-of-sequence token")
    return ids


def supports_fast_greedy(model) -> bool:
    """Decoder-only models whose forward takes position_ids and a KV cache (every causal LM of transformers,
    PEFT-wrapped or not); encoder-decoders and models without a cache take `generate`."""
    config = getattr(model, "config", None)
    return (config is not None and not getattr(config, "is_encoder_decoder", False)
            and getattr(config, "use_cache", True) is not False)


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """The length of the longest common token prefix of `rows`, leaving every row at least one token of
    its own (the suffix prefill must produce each row's first next-token logits)."""
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows) - 1
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)


def suffix_batch(rows: Sequence[Sequence[int]], prefix: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, S], mask [B, S]) of every row's tokens after the shared prefix, left-padded to the longest."""
    width = max(len(r) - prefix for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tail = list(r[prefix:])
        ids[i, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
        mask[i, width - len(tail):] = 1
    return ids, mask


def _forward(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, head=None):
    """(each row's next token [B], the cache). With a `ScreenedPick` the decoder stack runs alone and the
    screen picks the token from the last hidden state; otherwise the model's logits' argmax."""
    if head is not None:
        out = head.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        return head.pick(out.last_hidden_state[:, -1:, :]), out["cache"] if "cache" in out else out.past_key_values
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1, :].argmax(-1), out["cache"] if "cache" in out else out.past_key_values


class ScreenedPick:
    """A model's decoder stack and the exact screened argmax of its LM head (core.screened_head): the tokens
    of `lm_head(hidden).argmax(-1)` on the same batch, the full head computed only where the screen cannot
    prove the answer."""

    def __init__(self, decoder, head, screen):
        self.decoder, self.head, self.screen = decoder, head, screen

    def pick(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next tokens [B] of last hidden states [B, 1, n] (the slice the model's forward gives its head)."""
        return self.screen.argmax(hidden[:, -1, :], full=lambda: self.head(hidden)[:, -1, :])


def screened_pick(model, screen_head: bool | None = None) -> ScreenedPick | None:
    """The screened LM head for `model`, or None for the plain argmax of its logits. `screen_head` None
    (the default): where the model qualifies (core.screened_head.screen_parts: a Llama-like causal LM with an
    fp32 bias-free head on the CPU), fp32 products run at full precision, the CPU computes bf16 natively and
    its bf16 product passes `kernel_accumulates_in_fp32`. True: the same without the native-bf16 condition
    (same tokens, slower where bf16 is emulated); a model that does not qualify is an error. False: never."""
    from saferounds.core import screened_head as sh
    from saferounds.core.precision import native_bf16

    if screen_head is False:
        return None
    parts = sh.screen_parts(model)
    ok = parts is not None and sh.fp32_matmul_is_exact_fp32() and sh.kernel_accumulates_in_fp32(parts[1].in_features)
    if not ok:
        if screen_head:
            raise ValueError("greedy decoding: screen_head=True needs a Llama-like causal LM with an fp32 bias-free "
                             "LM head on the CPU, full-precision fp32 products and a bf16 product that accumulates "
                             "in fp32")
        return None
    if screen_head is None and not native_bf16():
        return None
    return ScreenedPick(parts[0], parts[1], sh.screened_head(parts[1].weight))


def _reserved_layer(kbuf: torch.Tensor, vbuf: torch.Tensor, filled: int):
    """A decoder layer's keys and values in buffers reserved for the whole answer: each step writes its token
    into the next free column instead of concatenating the cache (`DynamicLayer.update` copies all of it every
    step, 7.6% of a SmolLM2 decode step at 64 rows). `keys`/`values` are views of the filled part."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self):
            super().__init__()
            self.kbuf, self.vbuf, self.filled = kbuf, vbuf, filled
            self.device, self.is_initialized = kbuf.device, True
            self._views()

        def _views(self) -> None:
            self.keys, self.values = self.kbuf[:, :, :self.filled], self.vbuf[:, :, :self.filled]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            end = self.filled + key_states.shape[-2]
            if end > self.kbuf.shape[2]:
                raise RuntimeError("greedy decoding: the reserved cache is full (more steps than max_new_tokens)")
            self.kbuf[:, :, self.filled:end] = key_states
            self.vbuf[:, :, self.filled:end] = value_states
            self.filled = end
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.filled

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
            self._views()

    return ReservedLayer()


def _plain_layers(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _prefill_group(model, rows: Sequence[Sequence[int]], prefix: int, prefix_cache, pad_id: int, device, head=None):
    """(first tokens, the group's cache, its suffix mask) for rows whose suffixes are padded together."""
    import copy

    cache = None
    if prefix:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(rows))
    ids, suffix_mask = (t.to(device) for t in suffix_batch(rows, prefix, pad_id))
    mask = torch.cat([torch.ones((len(rows), prefix), dtype=torch.long, device=device), suffix_mask], dim=1)
    positions = (prefix + suffix_mask.cumsum(-1) - 1).clamp(min=0)  # pads get 0..; they are masked out
    first, cache = _forward(model, ids, mask, positions, cache, head)
    return first, cache, suffix_mask


def _prefill(model, rows: Sequence[Sequence[int]], pad_id: int, device, reserve: int, group: int, head=None):
    """(first tokens [B], the cache, the attention mask [B, L], each row's last position [B]), rows in
    the order given. The shared prefix is computed once; the suffixes are prefilled in groups of `group` rows
    of similar length (less padding than one batch padded to the longest), and the groups' caches are joined
    into reserved buffers with room for `reserve` more tokens, each row's suffix right-aligned after the
    prefix (the gap zero and masked out). A model whose cache layers are not plain full-attention ones
    (sliding windows, linear attention) gets one group in the given order and its own cache."""
    prefix = shared_prefix_length(rows)
    prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
    prefix_cache = None
    if prefix:
        ids = torch.tensor([list(rows[0][:prefix])], dtype=torch.long, device=device)
        positions = torch.arange(prefix, device=device)[None]
        if head is not None:  # no next token is needed from the prefix: the decoder stack alone
            prefix_cache = head.decoder(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                                        cache=None, use_cache=True)
            prefix_cache = prefix_cache["cache"] if "cache" in prefix_cache else prefix_cache.past_key_values
        else:
            _, prefix_cache = _forward(model, ids, torch.ones_like(ids), positions, None)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i])) if len(rows) > group else list(range(len(rows)))
    groups = [order[i:i + group] for i in range(0, len(order), group)]
    first = _prefill_group(model, [rows[i] for i in groups[0]], prefix, prefix_cache, pad_id, device, head)
    if not _plain_layers(first[1]):
        if len(groups) > 1:
            groups = [list(range(len(rows)))]
            first = _prefill_group(model, rows, prefix, prefix_cache, pad_id, device, head)
        tokens, mask, last = _joined_inputs([(groups[0], *first)], len(rows), prefix, device)
        return tokens, first[1], mask, last
    done = [(groups[0], *first)] + [(g, *_prefill_group(model, [rows[i] for i in g], prefix, prefix_cache, pad_id,
                                                          device, head)) for g in groups[1:]]
    tokens, mask, last = _joined_inputs(done, len(rows), prefix, device)
    width = mask.shape[1] - prefix
    cache = first[1]
    for li, layer in enumerate(cache.layers):
        k0 = layer.keys
        shape = (len(rows), k0.shape[1], prefix + width + reserve, k0.shape[3])
        kbuf, vbuf = k0.new_zeros(shape), k0.new_zeros(shape)
        for g, _, c, smask in done:
            idx = torch.tensor(g, device=device)
            start = prefix + width - smask.shape[1]
            kbuf[idx, :, :prefix] = c.layers[li].keys[:, :, :prefix]
            vbuf[idx, :, :prefix] = c.layers[li].values[:, :, :prefix]
            kbuf[idx, :, start:prefix + width] = c.layers[li].keys[:, :, prefix:]
            vbuf[idx, :, start:prefix + width] = c.layers[li].values[:, :, prefix:]
        cache.layers[li] = _reserved_layer(kbuf, vbuf, prefix + width)
    return tokens, cache, mask, last


def _joined_inputs(done: list, n: int, prefix: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first tokens [n], attention mask [n, prefix + widest suffix], last position [n]) of prefilled groups
    (rows g, first tokens, cache, suffix mask), each group's suffixes right-aligned after the prefix."""
    width = max(smask.shape[1] for *_, smask in done)
    mask = torch.zeros((n, prefix + width), dtype=torch.long, device=device)
    mask[:, :prefix] = 1
    tokens = torch.empty(n, dtype=torch.long, device=device)
    for g, first, _, smask in done:
        mask[g, prefix + width - smask.shape[1]:] = smask
        tokens[g] = first
    return tokens, mask, mask.sum(-1) - 1


def greedy_decode(model, rows: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
                  pad_id: int, prefill_group: int = 16, screen_head: bool | None = None) -> list[list[int]]:
    """Each row's greedy continuation of its prompt token ids, up to (not including) its first end-of-sequence
    token or `max_new_tokens` tokens. Rows are independent: the result does not depend on the batch's other
    rows beyond floating point. `screen_head` (`screened_pick`): the LM head's argmax from a bf16 product
    and a proof, the full fp32 head only where the proof fails; the same tokens as without it."""
    if not rows:
        return []
    if any(len(r) == 0 for r in rows):
        raise ValueError("greedy decoding: an empty prompt (no tokens)")
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in rows]
    eos = torch.tensor(list(eos_ids), device=device)
    alive = torch.arange(len(rows), device=device)  # original row of each cache row
    head = screened_pick(model, screen_head)
    with torch.inference_mode():
        nxt, cache, mask, last = _prefill(model, rows, pad_id, device, max_new_tokens, prefill_group, head)
        for step in range(max_new_tokens):
            ended = torch.isin(nxt, eos)
            for row, tok, end in zip(alive.tolist(), nxt.tolist(), ended.tolist()):
                if not end:
                    out[row].append(tok)
            if step == max_new_tokens - 1 or bool(ended.all()):
                break
            if bool(ended.any()):  # the finished rows leave the batch and its cache
                keep = (~ended).nonzero().flatten()
                cache.batch_select_indices(keep)
                alive, nxt, mask, last = alive[keep], nxt[keep], mask[keep], last[keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            last = last + 1
            nxt, cache = _forward(model, nxt[:, None], mask, last[:, None], cache, head)
    return out
