"""sampling.fast_generate: the top-k-first nucleus equals the full-sort nucleus; int8 generation is chosen
only where it pays and keeps the model's next-token distribution close."""
import pytest
import torch

from sampling.fast_generate import (RescoredInt8Head, int8_engine, nucleus_choice, quantize_int8, quantize_lm_head,
                                    quantize_mode, wants_int8)
from sampling.generate import uniform_noise


def full_sort_choice(probs, top_p, u):
    """The nucleus as the seeded sampler drew it before: a full descending sort of the vocabulary."""
    probs, order = probs.sort(dim=-1, descending=True)
    probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1])[:, None], right=True)
    last = (probs > 0).cumsum(-1).argmax(-1, keepdim=True)
    return order.gather(-1, torch.where(choice >= cdf.shape[-1], last, choice))


@pytest.mark.parametrize("scale", [0.3, 2.0, 12.0])  # flat (full-sort fallback), medium, peaked (top-k path)
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_nucleus_from_topk_equals_full_sort(scale, top_p):
    g = torch.Generator().manual_seed(7)
    for step in range(4):
        probs = torch.softmax(torch.randn(24, 3000, generator=g) * scale, -1)
        u = uniform_noise(torch.arange(24), step)
        assert torch.equal(nucleus_choice(probs, top_p, u, k=64), full_sort_choice(probs, top_p, u))


def test_nucleus_mixes_topk_and_fallback_rows_in_one_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 2000, generator=g)
    logits[::2] *= 20  # even rows peaked (nucleus inside the top 16), odd rows flat (full sort)
    probs = torch.softmax(logits, -1)
    u = uniform_noise(torch.arange(8), 0)
    assert torch.equal(nucleus_choice(probs, 0.9, u, k=16), full_sort_choice(probs, 0.9, u))


def test_quantize_mode_follows_setting_and_hardware():
    assert quantize_mode("auto", native_bf16=False, engine="x86") == "lm_head"  # the quality-keeping one
    assert quantize_mode("auto", native_bf16=True, engine="x86") is None
    assert quantize_mode("lm_head", native_bf16=True, engine="x86") == "lm_head"
    assert quantize_mode("int8", native_bf16=False, engine="x86") == "int8"
    assert quantize_mode("lm_head", native_bf16=False, engine=None) is None


def test_wants_int8_follows_setting_and_hardware():
    assert wants_int8("auto", native_bf16=False, engine="fbgemm") is True
    assert wants_int8("auto", native_bf16=True, engine="x86") is False  # bf16 units: the bf16 path wins
    assert wants_int8("int8", native_bf16=True, engine="x86") is True
    assert wants_int8("none", native_bf16=False, engine="x86") is False
    assert wants_int8("int8", native_bf16=False, engine=None) is False  # no engine: fp32 fallback
    with pytest.raises(ValueError, match="generation_quantize"):
        wants_int8("int4", native_bf16=False, engine="x86")


@pytest.mark.skipif(int8_engine() is None, reason="no x86/fbgemm quantized engine in this torch build")
def test_int8_model_keeps_next_token_distribution():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 300, (4, 12))
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits, -1)
        q = quantize_int8(model)
        got = torch.log_softmax(q(ids).logits, -1)
    assert type(q.model.layers[0].mlp.up_proj).__name__ == "Linear" and q.model.layers[0].mlp.up_proj.__module__.startswith(
        "torch.ao.nn.quantized.dynamic")
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    assert kl < 1e-3
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean().item() >= 0.95


needs_int8 = pytest.mark.skipif(int8_engine() is None, reason="no x86/fbgemm quantized engine in this torch build")


def peaked_head(vocab=3000, hidden=64, scale=8.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, hidden, generator=g) * scale / hidden ** 0.5, torch.Generator().manual_seed(seed + 1)


@needs_int8
def test_rescored_head_gives_exact_logits_to_every_candidate():
    weight, g = peaked_head()
    head = RescoredInt8Head(weight, None, k=64)
    x = torch.randn(2, 20, 64, generator=g)
    exact = x @ weight.t()
    with torch.no_grad():
        got = head(x)
    assert got.shape == exact.shape
    flat_got, flat_exact = got.reshape(-1, 3000), exact.reshape(-1, 3000)
    top = flat_exact.topk(16, dim=-1).indices  # the tokens a sampler can pick
    assert torch.allclose(flat_got.gather(-1, top), flat_exact.gather(-1, top), atol=1e-5)
    tail_err = (flat_got - flat_exact).abs().max().item()
    assert 0 < tail_err < 0.2 * flat_exact.abs().max().item()  # the tail really is int8, and close
    kl = (torch.softmax(flat_exact, -1) * (torch.log_softmax(flat_exact, -1) - torch.log_softmax(flat_got, -1))).sum(-1)
    assert kl.max().item() < 1e-3
    flat = torch.randn(4, 64, generator=g) * 1e-2  # nearly uniform rows: the candidates hold ~2% of the mass
    with torch.no_grad():
        got, exact = head(flat), flat @ weight.t()
    kl = (torch.softmax(exact, -1) * (torch.log_softmax(exact, -1) - torch.log_softmax(got, -1))).sum(-1)
    assert kl.max().item() < 1e-3  # the int8 tail keeps even a flat row's distribution


@needs_int8
def test_lm_head_model_samples_like_fp32():
    """The seeded sampler draws the same tokens from the re-scored head as from the fp32 model."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from sampling.generate import uniform_noise

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(60)  # a trained model's peaked next-token distributions
    q = quantize_lm_head(copy.deepcopy(model), k=64)
    assert isinstance(q.get_output_embeddings(), RescoredInt8Head) and q.generation_quantized == "lm_head"
    ids = torch.randint(0, 2000, (16, 10))
    with torch.no_grad():
        ref, got = model(ids).logits[:, -1], q(ids).logits[:, -1]
    u = uniform_noise(torch.arange(16), 0)
    same = (nucleus_choice(torch.softmax(ref / 0.9, -1), 0.95, u) == nucleus_choice(torch.softmax(got / 0.9, -1), 0.95, u))
    assert same.all()
