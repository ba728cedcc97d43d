"""sampling.fast_generate: the top-k-first nucleus equals the full-sort nucleus; int8 generation is chosen
only where it pays and keeps the model's next-token distribution close."""
import pytest
import torch

from saferounds.sampling.fast_generate import int8_engine, nucleus_choice, quantize_int8, wants_int8
from saferounds.sampling.generate import uniform_noise


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
