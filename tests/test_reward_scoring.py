import pytest
import torch

from saferounds.reward_models.scoring import format_sample, score

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    from saferounds.data.tiny import build_tiny
    from saferounds.reward_models.modeling import load_reward_model

    return load_reward_model(build_tiny(tmp_path_factory.mktemp("tiny"))["reward_model"])


class _Plain:
    chat_template = None


def test_plain_format_without_chat_template():
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert format_sample(_Plain(), msgs, "hello") == "System: be nice\nUser: hi\nAssistant: hello"


def test_chat_template_used_when_present(rm):
    _, tok = rm
    text = format_sample(tok, [{"role": "user", "content": "hi"}], "hello")
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n"


def test_scores_in_input_order_and_independent_of_batching(rm):
    model, tok = rm
    prompts = [[{"role": "user", "content": "q" * (i % 5 + 1)}] for i in range(9)]
    responses = [f"answer {'x' * (7 * i % 11)}" for i in range(9)]
    batched = score(model, tok, prompts, responses, batch_size=4)
    single = [score(model, tok, [p], [r], batch_size=1)[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(single, abs=1e-4)
    rev = score(model, tok, prompts[::-1], responses[::-1], batch_size=3)
    assert rev == pytest.approx(batched[::-1], abs=1e-4)
    assert len(set(round(s, 5) for s in batched)) > 1  # different texts, different scores


def test_score_progress_and_length_mismatch(rm):
    model, tok = rm
    seen = []
    score(model, tok, [[{"role": "user", "content": "a"}]] * 5, ["b"] * 5, batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1]
    with pytest.raises(ValueError):
        score(model, tok, [[]], ["a", "b"])


def test_pad_token_fixed_up_for_backbones_without_one(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from saferounds.reward_models.modeling import load_reward_model

    t = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1, "hi": 2, "User:": 3, "Assistant:": 4}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", unk_token="[UNK]")
    cfg = GPT2Config(vocab_size=5, n_embd=16, n_layer=1, n_head=2, num_labels=1, n_positions=32)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_reward_model(tmp_path)
    assert tok2.pad_token == "<eos>" and model.config.pad_token_id == 1
    s = score(model, tok2, [[{"role": "user", "content": "hi"}]] * 2, ["hi", "hi hi hi"], batch_size=2)
    assert s[0] == pytest.approx(score(model, tok2, [[{"role": "user", "content": "hi"}]], ["hi"])[0], abs=1e-5)


# ------------------------------------------------------------- two LoRA RMs on one backbone (score_both)

def _lora_rm(backbone, layers: int, seed: int):
    """An RM from the tiny 3-block policy with LoRA on its top `layers` blocks, adapter and head randomised
    (a trained adapter is not zero, and the two RMs must differ)."""
    from saferounds.reward_models.config import ModelConfig
    from saferounds.reward_models.modeling import load_reward_model

    cfg = ModelConfig()
    cfg.lora.enabled, cfg.lora.layers, cfg.lora.r = True, layers, 4
    torch.manual_seed(seed)
    model, tok = load_reward_model(backbone, cfg, for_training=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "score" in name:
                p.normal_(0, 0.2)
    return model.eval(), tok


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from saferounds.data.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-policy"))["policy"]


def test_score_both_runs_the_shared_blocks_once_and_scores_as_two_models(tiny_policy):
    from saferounds.reward_models.scoring import score_both, shared_trunk_depth

    a, b = _lora_rm(tiny_policy, 1, 1), _lora_rm(tiny_policy, 1, 2)
    assert shared_trunk_depth(a, b) == 2  # 3 blocks, LoRA on the top one
    prompts = [[{"role": "user", "content": "q" * (i % 5 + 1) + " why?"}] for i in range(7)]
    responses = [f"answer {'x' * (7 * i % 11)}" for i in range(7)]
    plain = [score(m, t, prompts, responses, batch_size=3) for m, t in (a, b)]
    assert abs(plain[0][0] - plain[1][0]) > 1e-3  # the two RMs really differ
    calls = {"a": 0, "b": 0}
    handles = [m.get_base_model().model.layers[0].register_forward_hook(
        lambda *args, k=k: calls.__setitem__(k, calls[k] + 1)) for k, (m, _) in (("a", a), ("b", b))]
    try:
        both = score_both([a, b], prompts, responses, batch_size=3)
    finally:
        for h in handles:
            h.remove()
    assert both[0] == pytest.approx(plain[0], abs=1e-5) and both[1] == pytest.approx(plain[1], abs=1e-5)
    assert calls == {"a": 3, "b": 0}  # the bottom blocks ran once per batch (3 batches), in the first RM only
    from saferounds.reward_models.scoring import decoder_layers

    assert all(type(m).__name__ != "_Skip" for m in decoder_layers(b[0]))  # the second RM's blocks restored


def test_score_both_falls_back_when_nothing_is_shared(tiny_policy):
    from saferounds.reward_models.scoring import score_both, shared_trunk_depth

    a, b = _lora_rm(tiny_policy, 1, 1), _lora_rm(tiny_policy, 0, 2)  # layers 0: LoRA on every block
    assert shared_trunk_depth(a, b) == 0
    c = _lora_rm(tiny_policy, 1, 3)
    with torch.no_grad():
        c[0].get_base_model().model.layers[0].mlp.up_proj.weight.add_(0.01)  # a different backbone
    assert shared_trunk_depth(a, c) == 0
    prompts, responses = [[{"role": "user", "content": "hi"}]] * 2, ["hello", "bye"]
    both = score_both([a, b], prompts, responses)
    assert both[1] == pytest.approx(score(*b, prompts, responses), abs=1e-6)
