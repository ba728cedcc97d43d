"""core.decoding: greedy answers with the shared prefix prefilled once and finished rows dropped give the
tokens of `model.generate(do_sample=False)`; eval.generate takes that path for greedy answers."""
from __future__ import annotations

import pytest
import torch

from saferounds.core.decoding import (MIN_SHARED_PREFIX, eos_token_ids, greedy_decode, shared_prefix_length,
                                      suffix_batch)

SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer briefly and refuse harmful requests."}
QUESTIONS = ["How do I bake bread?", "What is the capital of France?", "Tell me a story about a robot who paints",
             "hi", "Explain photosynthesis to a child in three short sentences please", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def tiny(tiny_models):
    """The tiny preset's architecture and tokenizer, with grouped-query attention, at random weights large
    enough that greedy answers vary from row to row (the built tiny policy repeats one token)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_models["policy"])
    cfg.initializer_range, cfg.num_key_value_heads = 0.3, 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    return model, AutoTokenizer.from_pretrained(tiny_models["policy"])


def prompt_rows(tok, system: bool = True) -> list[list[int]]:
    chats = [([SYSTEM] if system else []) + [{"role": "user", "content": q}] for q in QUESTIONS]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def plain_greedy(model, tok, rows, max_new_tokens, eos) -> list[list[int]]:
    """model.generate on the left-padded batch, cut at the first of `eos`."""
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    new = out[:, width:].tolist()
    return [r[:next((i for i, x in enumerate(r) if x in eos), len(r))] for r in new]


def batch_sizes(model, fn):
    """The (batch, sequence) shape of every forward pass fn() makes."""
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        result = fn()
    finally:
        hook.remove()
    return result, shapes


def test_shared_prefix_and_suffix_batch_by_hand():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 8, 9], [7, 8, 9]]) == 2  # every row keeps one token of its own
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0 and shared_prefix_length([]) == 0
    ids, mask = suffix_batch([[1, 2, 3, 4], [1, 2, 5]], 2, pad_id=0)
    assert ids.tolist() == [[3, 4], [0, 5]] and mask.tolist() == [[1, 1], [0, 1]]


def test_greedy_decode_gives_generates_tokens_with_the_prefix_once(tiny):
    model, tok = tiny
    rows = prompt_rows(tok)
    prefix = shared_prefix_length(rows)
    assert prefix >= MIN_SHARED_PREFIX  # the system prompt and the template's header
    eos = eos_token_ids(model, tok)
    ours, shapes = batch_sizes(model, lambda: greedy_decode(model, rows, max_new_tokens=10, eos_ids=eos,
                                                            pad_id=tok.pad_token_id))
    assert ours == plain_greedy(model, tok, rows, 10, eos)
    assert shapes[0] == (1, prefix)  # the shared prefix: one row
    assert shapes[1] == (len(rows), max(map(len, rows)) - prefix)  # then each row's own suffix
    assert all(s[1] == 1 for s in shapes[2:]) and len(shapes) == 2 + 9  # one token per later step


def test_finished_rows_leave_the_batch_and_the_rest_are_unchanged(tiny):
    model, tok = tiny
    rows = prompt_rows(tok)
    free = greedy_decode(model, rows, max_new_tokens=8, eos_ids=[-1], pad_id=tok.pad_token_id)  # nobody stops
    eos = [free[0][2], free[3][4]]  # row 0 stops after 2 tokens, row 3 after 4 at most, others where these appear
    ours, shapes = batch_sizes(model, lambda: greedy_decode(model, rows, max_new_tokens=8, eos_ids=eos,
                                                            pad_id=tok.pad_token_id))
    assert ours == plain_greedy(model, tok, rows, 8, eos)
    assert ours[0] == free[0][:2]
    finished_by = [next((i for i, x in enumerate(r) if x in eos), 99) for r in free]  # step at which each stops
    decode_batches = [s[0] for s in shapes[2:]]  # forward passes after the prefill, one per later step
    for step, b in enumerate(decode_batches, start=1):
        assert b == sum(1 for f in finished_by if f >= step), (step, decode_batches)
    assert min(decode_batches) < len(rows) - 1  # two rows at least left early


def test_no_shared_prefix_and_single_rows(tiny):
    model, tok = tiny
    rows = [r[1:] if i % 2 else r for i, r in enumerate(prompt_rows(tok, system=False))]  # nothing in common
    assert shared_prefix_length(rows) == 0
    eos = eos_token_ids(model, tok)
    assert greedy_decode(model, rows, max_new_tokens=6, eos_ids=eos, pad_id=tok.pad_token_id) == \
        plain_greedy(model, tok, rows, 6, eos)
    one = greedy_decode(model, rows[:1], max_new_tokens=6, eos_ids=eos, pad_id=tok.pad_token_id)
    assert one == plain_greedy(model, tok, rows[:1], 6, eos)
    assert greedy_decode(model, [], max_new_tokens=6, eos_ids=eos, pad_id=0) == []
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_decode(model, [[]], max_new_tokens=6, eos_ids=eos, pad_id=0)


def test_eval_generate_answers_the_same_with_either_decoder(tiny):
    from saferounds.eval.generate import generate

    model, tok = tiny
    chats = [[SYSTEM, {"role": "user", "content": q}] for q in QUESTIONS]
    fast, calls = batch_sizes(model, lambda: generate(model, tok, chats, max_new_tokens=8, batch_size=4))
    plain = generate(model, tok, chats, max_new_tokens=8, batch_size=4, decoder="generate")
    assert fast == plain and any(fast)
    assert calls[0][0] == 1  # the shared-prefix path ran
    sampled = generate(model, tok, chats, max_new_tokens=8, batch_size=4, do_sample=True, seed=3)
    assert sampled == generate(model, tok, chats, max_new_tokens=8, batch_size=4, do_sample=True, seed=3,
                               decoder="generate")  # sampling always goes through model.generate


def test_suffixes_prefilled_in_groups_join_into_one_cache(tiny):
    """Groups of 2 rows of similar length, each padded only to its own longest suffix, joined with the
    suffixes right-aligned after the prefix: the same tokens, and the prefill runs on fewer padded tokens."""
    model, tok = tiny
    rows = prompt_rows(tok)
    prefix, eos = shared_prefix_length(rows), eos_token_ids(model, tok)
    ours, shapes = batch_sizes(model, lambda: greedy_decode(model, rows, max_new_tokens=10, eos_ids=eos,
                                                            pad_id=tok.pad_token_id, prefill_group=2))
    assert ours == plain_greedy(model, tok, rows, 10, eos)
    suffixes = sorted(len(r) - prefix for r in rows)
    assert shapes[1:4] == [(2, suffixes[1]), (2, suffixes[3]), (2, suffixes[5])]  # the three groups' prefills
    assert sum(b * s for b, s in shapes[1:4]) < len(rows) * suffixes[-1]


def test_a_cache_of_other_layer_kinds_is_prefilled_in_one_group_in_order(tiny, monkeypatch):
    """Sliding-window or linear-attention cache layers are not joined into reserved buffers: the rows are
    prefilled as one batch in the given order and keep the model's own cache."""
    import saferounds.core.decoding as decoding

    model, tok = tiny
    rows = prompt_rows(tok)[::-1]
    monkeypatch.setattr(decoding, "_plain_layers", lambda cache: False)
    eos = eos_token_ids(model, tok)
    ours, shapes = batch_sizes(model, lambda: greedy_decode(model, rows, max_new_tokens=6, eos_ids=eos,
                                                            pad_id=tok.pad_token_id, prefill_group=2))
    assert ours == plain_greedy(model, tok, rows, 6, eos)
    prefix = shared_prefix_length(rows)
    assert shapes[1] == (2, sorted(len(r) - prefix for r in rows)[1])  # the first group, then all rows at once
    assert shapes[2] == (len(rows), max(map(len, rows)) - prefix)
