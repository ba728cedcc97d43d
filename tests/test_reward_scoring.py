import pytest
import torch

from reward_models.scoring import format_sample, score

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    from pipeline.tiny import build_tiny
    from reward_models.modeling import load_reward_model

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

    from reward_models.modeling import load_reward_model

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
