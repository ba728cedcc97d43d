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
    """The (batch, sequence) shape of every forward pass fn() makes (of the decoder stack, which both the
    model's forward and the screened head's path run)."""
    shapes = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
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


# The screened LM head (core.screened_head): the fp32 head's argmax from a bf16 product, a bound and an exact
# rescoring; the full head where the screen cannot prove the answer.

def _screen_or_skip(weight, **kw):
    from saferounds.core.screened_head import ScreenedHead, kernel_accumulates_in_fp32

    if not kernel_accumulates_in_fp32(weight.shape[1]):
        pytest.skip("this torch build's bf16 product does not accumulate in fp32: the screen stays off here")
    return ScreenedHead(weight, **kw)


def _screened_vs_full(screen, weight, h):
    """(the screen's argmax, the full fp32 head's argmax) of rows h, and the screen's counters for the call."""
    from saferounds.core import screened_head as sh

    sh.reset_stats()
    with torch.inference_mode():
        full = torch.nn.functional.linear(h, weight)
        got = screen.argmax(h, full=lambda: torch.nn.functional.linear(h, weight))
    return got, full.argmax(-1), dict(sh.STATS)


def test_the_bound_holds_for_every_token():
    """|f_j - a_j| <= E + k |a_j| for the fp32 head f (and the exact fp64 logits), on random, large-norm and
    cancelling rows, with a vocabulary that is not a whole number of blocks."""
    from saferounds.core.screened_head import BLOCK, UBF16

    torch.manual_seed(0)
    weight = torch.randn(1000, 96) * 0.2
    weight[7] *= 40  # one long weight row
    weight[5, 48:] = weight[5, :48]
    screen = _screen_or_skip(weight)
    rows = [torch.randn(16, 96) * 3, torch.randn(4, 96) * 1e4, torch.randn(4, 96) * 1e-3]
    cancel = torch.randn(4, 96)
    cancel[:, 48:] = -cancel[:, :48] * (1 + 1e-3)  # token 5's logit: two halves that nearly cancel
    rows.append(cancel)
    k = UBF16 / (1 - UBF16)
    for h in rows:
        hb = h.to(torch.bfloat16)
        approx = torch.mm(screen.wb, hb.t())[: screen.vocab].double().t()
        big_e, _, h64, safe = screen._row_terms(h, hb)
        assert safe
        bound = big_e[:, None] + k * approx.abs()
        f32 = torch.nn.functional.linear(h, weight).double()
        assert ((f32 - approx).abs() <= bound).all()
        assert ((h64 @ weight.double().t() - approx).abs() <= bound).all()
    assert screen.vocab % BLOCK != 0


def test_screened_argmax_equals_the_fp32_argmax_on_random_and_adversarial_rows():
    torch.manual_seed(1)
    weight = torch.randn(1000, 64) * 0.15
    weight[11] = weight[3] * (1 + 2 ** -12)  # differs from row 3 below bf16's resolution, far above fp32's
    weight[20] = weight[3]  # an exact duplicate of row 3
    weight[21] = -weight[3]
    screen = _screen_or_skip(weight)
    random = torch.randn(32, 64) * 4
    big = torch.randn(8, 64) * 1e5
    negative = -weight[:8].abs().sum(0, keepdim=True).repeat(4, 1) * torch.rand(4, 1)  # every logit negative-ish
    toward_11 = weight[11] * 30 + torch.randn(4, 64) * 1e-3  # 3 and 11 nearly tied (bf16 cannot tell them apart)
    for h in (random, big, negative, toward_11):
        got, want, stats = _screened_vs_full(screen, weight, h)
        assert torch.equal(got, want), (got, want)
    got, want, stats = _screened_vs_full(screen, weight, toward_11)
    assert want.tolist() == [11] * 4 and stats["candidates"] >= 3 * 4  # the bound cannot rule out 3 and 20
    assert stats["fallback_steps"] == 0  # the exact rescoring told them apart: no full head
    got, want, stats = _screened_vs_full(screen, weight, random)
    assert stats["fallback_steps"] == 0 and stats["candidates"] < 8 * len(random)
    positive = torch.rand(1000, 64)  # every logit negative: the last block's padding (a = 0) must not count
    h = -torch.rand(6, 64)
    got, want, stats = _screened_vs_full(_screen_or_skip(positive), positive, h)
    assert torch.equal(got, want) and stats["fallback_steps"] == 0


def test_ties_and_the_fallbacks_take_the_full_head():
    """An exact tie (two equal weight rows on top) cannot be proved: the full head decides, lowest index first.
    Too many candidates, underflowing rows and non-finite rows take the full head too."""
    torch.manual_seed(2)
    weight = torch.randn(600, 64) * 0.15
    weight[40] = weight[9]
    screen = _screen_or_skip(weight)
    tie = (weight[9] * 50).repeat(3, 1)
    got, want, stats = _screened_vs_full(screen, weight, tie)
    assert torch.equal(got, want) and got.tolist() == [9, 9, 9]
    assert stats["fallback_ambiguous"] == 1 and stats["fallback_steps"] == 1
    tiny_rows = torch.randn(3, 64) * 1e-30  # products underflow: every logit 0, all tokens candidates
    got, want, stats = _screened_vs_full(screen, weight, tiny_rows)
    assert torch.equal(got, want) and stats["fallback_candidates"] == 1
    nan = torch.randn(2, 64)
    nan[1, 5] = float("nan")
    got, want, stats = _screened_vs_full(screen, weight, nan)
    assert torch.equal(got, want) and stats["fallback_nonfinite"] == 1
    huge = torch.randn(2, 64) * 1e33  # near fp32's range: partial sums could overflow
    got, want, stats = _screened_vs_full(screen, weight, huge)
    assert torch.equal(got, want) and stats["fallback_nonfinite"] == 1
    strict = _screen_or_skip(weight, max_candidates=0)
    h = torch.randn(5, 64)
    got, want, stats = _screened_vs_full(strict, weight, h)
    assert torch.equal(got, want) and stats["fallback_candidates"] == 1


def test_greedy_decode_with_the_screened_head_gives_the_same_tokens(tiny, monkeypatch):
    """On the tiny Llama (random weights, a vocabulary not a whole number of blocks), the screened head gives
    the unscreened decoder's and model.generate's tokens, and the full head runs only on fallback steps."""
    from saferounds.core import decoding
    from saferounds.core import screened_head as sh

    model, tok = tiny
    if not sh.kernel_accumulates_in_fp32(model.config.hidden_size):
        pytest.skip("no fp32-accumulating bf16 product here")
    rows = prompt_rows(tok)
    eos = eos_token_ids(model, tok)
    head_calls, forward = [], model.lm_head.forward
    with monkeypatch.context() as patch:  # counted without a hook (a hooked head is not screened)
        patch.setattr(model.lm_head, "forward", lambda x: head_calls.append(x.shape[0]) or forward(x))
        sh.reset_stats()
        screened = greedy_decode(model, rows, max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id,
                                 screen_head=True, prefill_group=2)
        stats = dict(sh.STATS)
    assert screened == greedy_decode(model, rows, max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id,
                                     screen_head=False, prefill_group=2)
    assert screened == plain_greedy(model, tok, rows, 10, eos)
    assert stats["steps"] == 3 + 9 and stats["rows"] > 0  # three prefill groups, then one pick per step
    assert len(head_calls) == stats["fallback_steps"] < stats["steps"]
    assert isinstance(decoding.screened_pick(model, True), decoding.ScreenedPick)


def test_when_the_screen_is_used(tiny, monkeypatch):
    """Default: on for an fp32 Llama-like model where the CPU has native bf16; off without it, off for a bf16
    model or a head with a bias; True insists (an error where the model does not qualify); False: never."""
    import copy

    import saferounds.core.precision as precision
    from saferounds.core import decoding
    from saferounds.core import screened_head as sh

    model, _ = tiny
    if not sh.kernel_accumulates_in_fp32(model.config.hidden_size):
        pytest.skip("no fp32-accumulating bf16 product here")
    monkeypatch.setattr(precision, "native_bf16", lambda *a, **k: False)
    assert decoding.screened_pick(model) is None and decoding.screened_pick(model, True) is not None
    monkeypatch.setattr(precision, "native_bf16", lambda *a, **k: True)
    assert decoding.screened_pick(model) is not None and decoding.screened_pick(model, False) is None
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert decoding.screened_pick(half) is None
    with pytest.raises(ValueError, match="screen_head=True"):
        decoding.screened_pick(half, True)
    hook = model.lm_head.register_forward_hook(lambda *a: None)  # the screen would bypass a hook on the head
    try:
        assert decoding.screened_pick(model) is None
    finally:
        hook.remove()
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")  # fp32 products may use bf16
    assert decoding.screened_pick(model) is None


def test_the_screen_is_rebuilt_when_the_weight_changes():
    from saferounds.core.screened_head import forget_screens, screened_head

    weight = torch.nn.Parameter(torch.randn(300, 32))
    first = screened_head(weight)
    assert screened_head(weight) is first
    with torch.no_grad():
        weight.mul_(2)
    second = screened_head(weight)
    assert second is not first and torch.equal(second.wb[:300], weight.detach().to(torch.bfloat16))
    forget_screens()
    assert screened_head(weight) is not second


def test_a_lora_wrapped_model_is_screened_through_its_decoder(tiny):
    """PEFT: the screen runs the wrapped model's decoder stack (the adapters in it) and its own head."""
    import copy

    from peft import LoraConfig, get_peft_model

    from saferounds.core import decoding
    from saferounds.core import screened_head as sh

    model, tok = tiny
    if not sh.kernel_accumulates_in_fp32(model.config.hidden_size):
        pytest.skip("no fp32-accumulating bf16 product here")
    torch.manual_seed(4)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False)).eval()
    assert decoding.screened_pick(lora, True) is not None
    rows, eos = prompt_rows(tok), eos_token_ids(model, tok)
    screened = greedy_decode(lora, rows, max_new_tokens=8, eos_ids=eos, pad_id=tok.pad_token_id, screen_head=True)
    assert screened == greedy_decode(lora, rows, max_new_tokens=8, eos_ids=eos, pad_id=tok.pad_token_id,
                                     screen_head=False)
    assert screened != greedy_decode(model, rows, max_new_tokens=8, eos_ids=eos, pad_id=tok.pad_token_id)
