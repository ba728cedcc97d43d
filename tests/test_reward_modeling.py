from types import SimpleNamespace

import pytest
import torch

from saferounds.core.errors import InputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from saferounds.data.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))["reward_model"]


def _cfg(**kw):
    lora = SimpleNamespace(enabled=kw.pop("lora", False), r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    base = dict(dtype="float32", load_in_4bit=False, load_in_8bit=False, trust_remote_code=False,
                gradient_checkpointing=False, lora=lora)
    return SimpleNamespace(**{**base, **kw})


def test_lora_rm_trains_saves_and_reloads_through_peft(tiny, tmp_path):
    from saferounds.reward_models.modeling import load_reward_model, save_reward_model
    from saferounds.reward_models.scoring import score

    model, tok = load_reward_model(tiny, _cfg(lora=True), for_training=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) < \
        sum(p.numel() for p in model.parameters()) / 2
    with torch.no_grad():  # make the adapter matter, then check it survives save/load
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    prompts, responses = [[{"role": "user", "content": "hi"}]] * 2, ["hello there", "go away"]
    before = score(model, tok, prompts, responses)
    save_reward_model(model, tok, tmp_path / "rm")
    assert (tmp_path / "rm" / "adapter_config.json").exists()
    assert not list((tmp_path / "rm").glob("*.bin"))  # safetensors only
    again, tok2 = load_reward_model(tmp_path / "rm", _cfg())
    assert score(again, tok2, prompts, responses) == pytest.approx(before, abs=1e-5)


def test_quantisation_needs_cuda(tiny):
    from saferounds.reward_models.modeling import load_reward_model

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(InputError, match="load_in_4bit"):
        load_reward_model(tiny, _cfg(load_in_4bit=True))


def test_unloadable_backbone_is_input_error(tmp_path):
    from saferounds.reward_models.modeling import load_reward_model

    with pytest.raises(InputError, match="model.reward_model: cannot load"):
        load_reward_model(tmp_path / "nothing-here")


def test_scoring_tokenizes_one_batch_at_a_time(tiny):
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    model, tok = load_reward_model(tiny)
    seen = []
    real_call = type(tok).__call__

    class Spy(type(tok)):
        def __call__(self, texts, *a, **k):
            seen.append(len(texts))
            return real_call(self, texts, *a, **k)

    tok.__class__ = Spy
    score(model, tok, [[{"role": "user", "content": "q"}]] * 23, [f"r{i}" for i in range(23)], batch_size=5)
    assert seen == [5, 5, 5, 5, 3]


def test_regression_objective_learns_ranking_order(tiny, tmp_path):
    from saferounds.reward_models.config import RewardModelConfig
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score
    from saferounds.reward_models.training import train_reward_model

    texts = ["Paris is the capital of France.", "It is Paris.", "Maybe Lyon?", "I refuse."]
    recs = [{"prompt": [{"role": "user", "content": f"capital of France? {i}"}], "responses": texts,
             "ranking": [0, 1, 2, 3], "source": "helpfulness"} for i in range(16)]
    cfg = RewardModelConfig(objective="regression", learning_rate=3e-3, batch_size=8, eval_fraction=0.0,
                            epochs=3, min_warmup_steps=1)
    m = train_reward_model("helpfulness", recs, tiny, tmp_path / "rm", cfg)
    assert m["objective"] == "regression" and m["train_items"] == 64
    model, tok = load_reward_model(tmp_path / "rm")
    s = score(model, tok, [[{"role": "user", "content": "capital of France? 99"}]] * 4, texts)
    assert s[0] > s[3]  # best-ranked above worst-ranked on an unseen prompt
