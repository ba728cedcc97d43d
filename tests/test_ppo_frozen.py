"""LoRA on the top layers only: the frozen lower layers run once per rollout (ppo_model.reference_pass) and
the PPO epochs start from their output. The numbers must be those of full passes, and a run must give the
metrics of a run without the split."""
import pytest
import torch

from saferounds.data.tiny import build_tiny
from saferounds.pipeline.training.config import PPOConfig
from saferounds.pipeline.training.ppo_model import (PolicyAndValue, cat_frozen, forward_response, frozen_depth,
                                                    reference_logprobs, reference_pass)
from saferounds.pipeline.training.ppo_sampling import encode_prompts, left_pad

torch.set_num_threads(1)


def prompt(i):
    return {"id": str(i), "messages": [{"role": "user", "content": "Tell me about cats " + "and rain " * (i % 4)}],
            "is_safety": i % 3 == 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = build_tiny(tmp_path_factory.mktemp("tiny"))
    return AutoTokenizer.from_pretrained(paths["policy"]), lambda: AutoModelForCausalLM.from_pretrained(paths["policy"])


def top_lora(model, layers):
    from peft import LoraConfig, get_peft_model

    from saferounds.reward_models.modeling import linear_module_names

    n = model.config.num_hidden_layers
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=linear_module_names(model),
                                            layers_to_transform=list(range(n - layers, n)), task_type="CAUSAL_LM"))


def test_depth(tiny):
    from peft import LoraConfig, get_peft_model

    tok, load = tiny
    n = load().config.num_hidden_layers
    assert frozen_depth(load()) == 0  # full fine-tuning: nothing frozen
    assert frozen_depth(top_lora(load(), 1)) == n - 1
    everywhere = get_peft_model(load(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert frozen_depth(everywhere) == 0


def test_split_passes_equal_full_passes(tiny):
    tok, load = tiny
    torch.manual_seed(0)
    policy = top_lora(load(), 1)
    for name, p in policy.named_parameters():  # adapters that do something
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    model = PolicyAndValue(policy).eval()
    torch.nn.init.normal_(model.value_head.weight, std=0.5)
    q_ids, q_mask = left_pad(encode_prompts(tok, [prompt(i) for i in range(5)]), tok.pad_token_id)
    r_ids = torch.randint(5, 60, (5, 7))
    r_mask = torch.ones_like(r_ids)
    r_mask[1, 4:] = 0
    ref_full = reference_logprobs(None, model, q_ids, q_mask, r_ids, r_mask, 0.8)
    ref_split, frozen = reference_pass(None, model, q_ids, q_mask, r_ids, r_mask, 0.8)
    assert frozen.shape[:2] == (5, q_ids.shape[1] + 7)
    assert torch.allclose(ref_full, ref_split, atol=1e-5)
    with torch.no_grad():
        logits, values = forward_response(model, q_ids, q_mask, r_ids, r_mask, 0.8)
        logits2, values2 = forward_response(model, q_ids, q_mask, r_ids, r_mask, 0.8, frozen=frozen)
    assert torch.allclose(logits, logits2, atol=1e-4) and torch.allclose(values, values2, atol=1e-5)
    assert not torch.allclose(ref_full, torch.log_softmax(logits, -1).gather(-1, r_ids[..., None])[..., 0])
    # gradients reach the adapters and the head through the split pass
    logits2, values2 = forward_response(model.train(), q_ids, q_mask, r_ids, r_mask, 0.8, frozen=frozen)
    (logits2.logsumexp(-1).mean() + values2.mean()).backward()
    assert model.value_head.weight.grad is not None
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_cat_frozen_pads_prompt_left_and_response_right():
    a, b = torch.ones(2, 3 + 2, 1), 2 * torch.ones(1, 1 + 4, 1)
    out = cat_frozen([a, b], [3, 1], 3, 4)
    assert out.shape == (3, 7, 1)
    assert out[2, :, 0].tolist() == [0, 0, 2, 2, 2, 2, 2]
    assert out[0, :, 0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert cat_frozen([a, None], [3, 1], 3, 4) is None


def test_same_metrics_with_and_without_the_split(tiny, monkeypatch):
    from saferounds.pipeline.training import ppo_model
    from saferounds.pipeline.training.ppo import train_ppo

    tok, load = tiny
    prompts = [prompt(i) for i in range(8)]

    def score(batch, texts):
        return torch.tensor([sum(c in "aeiou " for c in t) / max(len(t), 1) for t in texts]), None
    cfg = PPOConfig(steps=2, batch_size=8, mini_batch_size=4, rollout_batch_size=4, ppo_epochs=2, max_new_tokens=8,
                    learning_rate=1e-2, seed=3, save_every=100)
    runs = []
    for split in (True, False):
        if not split:
            monkeypatch.setattr(ppo_model, "frozen_depth", lambda policy: 0)
        torch.manual_seed(0)
        _, summary = train_ppo(top_lora(load(), 1), tok, prompts, score, cfg)
        runs.append(summary["last"])
    keys = [k for k in runs[0] if not k.endswith("_s")]
    for k in keys:
        assert runs[0][k] == pytest.approx(runs[1][k], rel=1e-3, abs=1e-4), k
