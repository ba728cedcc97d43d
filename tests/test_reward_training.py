import math

import pytest
import torch

from saferounds.reward_models.config import RewardModelConfig
from saferounds.reward_models.evaluation import pair_metrics
from saferounds.reward_models.losses import ranking_loss
from saferounds.reward_models.training import (PairCollator, _trainer_class, mix_for, pair_features, prepare_pairs,
                                    prepare_regression, reversed_safety, split_by_prompt, train_reward_model,
                                    training_set, warmup_steps)

torch.set_num_threads(1)


def _pair(i, source="helpfulness", label=None, rating=None, chosen=None):
    return {"prompt": [{"role": "user", "content": f"prompt {i}"}], "chosen": chosen or f"good answer {i}",
            "rejected": f"bad {i}", "rating": rating, "margin": None, "safety_label": label, "source": source}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from saferounds.data.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))["reward_model"]


def test_mix_helpfulness_gets_equal_safety_share():
    cfg = RewardModelConfig()
    h, s = [_pair(i) for i in range(10)], [_pair(100 + i, "safety") for i in range(30)]
    mixed, stats = mix_for("helpfulness", h, s, cfg, seed=1)
    assert stats == {"helpfulness": 10, "safety": 10, "total": 20}
    assert sum(p["source"] == "safety" for p in mixed) == 10
    assert mix_for("helpfulness", h, s, cfg, seed=1)[0] == mixed  # seeded


def test_mix_safety_is_90_10_and_ratios_configurable():
    h, s = [_pair(i) for i in range(10)], [_pair(100 + i, "safety") for i in range(18)]
    _, stats = mix_for("safety", h, s, RewardModelConfig())
    assert stats == {"helpfulness": 2, "safety": 18, "total": 20}  # 2 / 20 = 10%
    _, stats = mix_for("safety", h, s, RewardModelConfig(safety_helpfulness_fraction=0.25))
    assert stats["helpfulness"] == 6  # round(18 * 0.25 / 0.75)
    _, stats = mix_for("helpfulness", h, s, RewardModelConfig(helpfulness_safety_ratio=0.5))
    assert stats["safety"] == 5
    _, stats = mix_for("helpfulness", h, s[:3], RewardModelConfig())
    assert stats["safety"] == 3  # capped at what exists


def test_reversed_safety_pairs_are_dropped():
    bad = dict(_pair(1, "safety"), chosen_unsafe_rejected_safe=True)
    bad2 = _pair(2, "safety", label="chosen_unsafe_rejected_safe")
    ok = _pair(3, "safety", label="both_unsafe")
    assert reversed_safety(bad) and reversed_safety(bad2) and not reversed_safety(ok)
    pairs, dropped = prepare_pairs([bad, bad2, ok])
    assert dropped == 2 and pairs == [ok]
    items, dropped = prepare_regression([bad, ok])
    assert dropped == 1 and [x["response"] for x in items] == ["good answer 3", "bad 3"]


def test_rankings_expand_and_regress():
    rank = {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"], "ranking": [1, 2, 0],
            "source": "helpfulness"}
    pairs, _ = prepare_pairs([rank])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "c"), ("b", "a"), ("c", "a")]
    items, _ = prepare_regression([rank])
    rewards = {x["response"]: x["reward"] for x in items}
    assert rewards["b"] > rewards["c"] > rewards["a"] and sum(rewards.values()) == pytest.approx(0, abs=1e-9)


def test_split_by_prompt_keeps_prompts_together():
    recs = [_pair(i % 20) for i in range(200)]
    train, held = split_by_prompt(recs, 0.3, seed=0)
    assert len(train) + len(held) == 200 and 0 < len(held) < 200
    assert not {p["prompt"][0]["content"] for p in train} & {p["prompt"][0]["content"] for p in held}
    assert split_by_prompt(recs, 0.3, seed=0) == (train, held)


def test_training_set_holds_out_own_kind():
    recs = [_pair(i) for i in range(40)] + [_pair(100 + i, "safety") for i in range(40)]
    items, held, stats = training_set("safety", recs, RewardModelConfig(eval_fraction=0.25))
    assert held and all(p["source"] == "safety" for p in held)
    assert not {p["prompt"][0]["content"] for p in items} & {p["prompt"][0]["content"] for p in held}
    assert stats["mix"]["total"] == len(items)


def test_warmup_is_3_percent_at_least_5_steps():
    assert warmup_steps(100, RewardModelConfig(batch_size=8)) == (13, 5)
    assert warmup_steps(10_000, RewardModelConfig(batch_size=8)) == (1250, 38)  # ceil(0.03 * 1250)
    assert warmup_steps(16, RewardModelConfig(batch_size=8)) == (2, 2)  # never longer than the run


def test_pair_metrics_hand_computed():
    pairs = [_pair(0, rating="significantly_better", label="chosen_safe_rejected_unsafe"),
             _pair(1, rating="unsure", label="both_unsafe"),
             _pair(2, rating="negligibly_better"), _pair(3)]
    m = pair_metrics([2.0, -1.0, 0.5, 1.0], [-1.0, 0.5, 0.5, 3.0], pairs)
    assert m["n"] == 4 and m["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    nb = m["by_rating"]["negligibly_better_or_unsure"]
    assert (nb["n"], nb["accuracy"]) == (2, 0.25)
    # Wilson 95% for 1.5 of 4: centre (0.375 + 0.4802) / 1.9604 = 0.4362, half 1.96 * sqrt(0.0586 + 0.0600) / 1.9604 = 0.3443
    assert m["ci95"] == pytest.approx([0.0919, 0.7806], abs=1e-3)
    assert m["by_rating"]["significantly_better"]["accuracy"] == 1.0
    # unsafe responses: pair 0 rejected (-1.0 -> flagged), pair 1 both (-1.0 flagged, 0.5 missed)
    assert m["unsafe_responses"] == 3 and m["unsafe_recall"] == pytest.approx(2 / 3)
    assert m["by_safety_label"]["both_unsafe"]["accuracy"] == 0.0
    assert m["by_origin"] == {}  # no pair says where it came from


def test_accuracy_by_origin_and_the_chance_check():
    from saferounds.reward_models.evaluation import ranks_better_than_chance

    pairs = [{**_pair(i), "origin": "hh-helpful" if i % 2 else "do-not-answer"} for i in range(200)]
    chosen = [1.0] * 200
    rejected = [0.0 if i % 4 else 2.0 for i in range(200)]  # 150 of 200 right; every odd i is right
    m = pair_metrics(chosen, rejected, pairs)
    assert m["by_origin"]["hh-helpful"]["accuracy"] == 1.0 and m["by_origin"]["do-not-answer"]["accuracy"] == 0.5
    assert ranks_better_than_chance(m) and ranks_better_than_chance(m["by_origin"]["hh-helpful"])
    assert not ranks_better_than_chance(m["by_origin"]["do-not-answer"])  # 0.5 inside its interval
    small = pair_metrics([1.0] * 10, [0.0] * 7 + [2.0] * 3, [_pair(i) for i in range(10)])
    assert small["accuracy"] == 0.7 and not ranks_better_than_chance(small)  # 7/10: [0.40, 0.89]
    assert not ranks_better_than_chance(None) and not ranks_better_than_chance({"accuracy": 0.9})


def test_one_forward_pass_loss_equals_separate_scoring(tiny):
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    model, tok = load_reward_model(tiny)
    pairs = [_pair(1, rating="better"), _pair(2, chosen="a much longer good answer " * 4)]
    feats = pair_features(tok, pairs, "large", 128)
    batch = PairCollator(tok)([{k: v[i] for k, v in feats.items()} for i in range(2)])
    assert batch["input_ids"].shape[0] == 4 and batch["margin"].tolist() == [2.0, 0.0]
    trainer = object.__new__(_trainer_class())  # only compute_loss is exercised
    trainer.safety_term_weight, trainer.center_rewards = 0.0, 0.0
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
    prompts = [p["prompt"] for p in pairs]
    c = torch.tensor(score(model, tok, prompts, [p["chosen"] for p in pairs]))
    r = torch.tensor(score(model, tok, prompts, [p["rejected"] for p in pairs]))
    assert loss.item() == pytest.approx(ranking_loss(c, r, torch.tensor([2.0, 0.0])).item(), abs=1e-5)


def test_train_learns_saves_and_resumes(tiny, tmp_path):
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    recs = []
    for i in range(48):
        recs.append(_pair(i, "safety", "chosen_safe_rejected_unsafe", "better",
                          chosen="I'm sorry, but I can't help with that."))
        recs[-1]["rejected"] = "Sure, here is how to kill the process."
    cfg = RewardModelConfig(learning_rate=2e-3, batch_size=8, eval_fraction=0.25, logging_steps=1, save_steps=2,
                            min_warmup_steps=1)
    out = tmp_path / "safety" / "v1"
    m = train_reward_model("safety", recs, tiny, out, cfg, work_dir=tmp_path / "work")
    assert m["steps"] == math.ceil(m["train_items"] / 8) and m["heldout"]["accuracy"] == 1.0
    assert m["heldout"]["unsafe_recall"] == 1.0  # the BCE term pushes unsafe scores below 0
    assert (out / "model.safetensors").exists() and (out / "manifest.json").exists()
    model, tok = load_reward_model(out)
    s = score(model, tok, [[{"role": "user", "content": "x"}]] * 2,
              ["I'm sorry, but I can't help with that.", "Sure, here is how to kill the process."])
    assert s[0] > 0 > s[1]
    again = train_reward_model("safety", recs, tiny, tmp_path / "again", cfg, work_dir=tmp_path / "work")
    assert again["resumed_from"] is not None  # picked the checkpoint up instead of starting over


def test_cosine_schedule_to_10_percent_with_warmup(tiny, tmp_path):
    import glob
    import json

    recs = [_pair(i) for i in range(80)]
    cfg = RewardModelConfig(learning_rate=1e-3, batch_size=4, eval_fraction=0.0, logging_steps=1)
    m = train_reward_model("helpfulness", recs, tiny, tmp_path / "h", cfg, work_dir=tmp_path / "w")
    assert m["steps"] == 20 and m["warmup_steps"] == 5  # 3% of 20 < 5 -> 5
    state = json.loads(open(sorted(glob.glob(str(tmp_path / "w" / "checkpoint-*")))[-1] + "/trainer_state.json")
                       .read())
    lrs = [x["learning_rate"] / 1e-3 for x in state["log_history"] if "learning_rate" in x]
    assert lrs[:6] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert min(lrs[6:]) >= 0.1 - 1e-9 and lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_truncate_pair_keeps_both_responses_and_a_shared_context():
    from saferounds.reward_models.training import truncate_pair

    prompt = list(range(100, 190))  # 90 prompt tokens, then the two answers
    chosen, rejected = prompt + [1] * 30, prompt + [2] * 20
    c, r = truncate_pair(chosen, rejected, 64)
    assert len(c) == 64 and len(r) == 54  # the same 56 leading tokens cut from both
    assert c[-30:] == [1] * 30 and r[-20:] == [2] * 20  # whole responses kept
    assert c[:34] == r[:34] == prompt[56:]  # the same context before them
    assert truncate_pair(chosen, rejected, 200) == (chosen, rejected)
    long_c, short_r = [7] * 300, [8] * 10  # the shorter one is shorter than the cut: each keeps its end
    assert truncate_pair(long_c, short_r, 64) == ([7] * 64, [8] * 10)


def test_long_dialogues_keep_their_responses_apart(tiny):
    """Right truncation made long pairs identical (the responses cut away); pairs now differ, and the rare
    identical pair is left out of training (its gradient is zero)."""
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.training import drop_identical

    _, tok = load_reward_model(tiny)
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "words " * 20}
               for i in range(8)]
    pairs = [{**_pair(1), "prompt": history + [{"role": "user", "content": "and?"}], "chosen": "Good answer.",
              "rejected": "Bad answer."}, {**_pair(2), "chosen": "Same.", "rejected": "Same."}]
    cols = pair_features(tok, pairs, "none", 48)
    assert all(len(c) <= 48 and len(r) <= 48 for c, r in zip(cols["chosen_input_ids"], cols["rejected_input_ids"]))
    assert cols["chosen_input_ids"][0] != cols["rejected_input_ids"][0]
    kept, dropped = drop_identical(cols)
    assert dropped == 1 and kept["chosen_input_ids"] == cols["chosen_input_ids"][:1]
    assert {k: len(v) for k, v in kept.items()} == {k: 1 for k in cols}


def test_scoring_truncates_the_start_not_the_response(tiny):
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import encode

    _, tok = load_reward_model(tiny)
    side = tok.truncation_side
    ids = encode(tok, ["start " * 60 + "THE END"], 16)["input_ids"][0]
    assert len(ids) == 16 and tok.decode(ids).rstrip().endswith("THE END")
    assert tok.truncation_side == side  # the tokenizer is left as it was


def _varied_pairs():
    history = [{"role": "user", "content": "first " * 5}, {"role": "assistant", "content": "reply " * 4}]
    return [
        _pair(1, rating="better"),
        {**_pair(2), "prompt": history + [{"role": "user", "content": "go on"}], "chosen": "a long good answer " * 5,
         "rejected": "no"},
        {**_pair(3), "chosen": "same start and then more", "rejected": "same start"},  # one a prefix of the other
        _pair(4, chosen="short"),
    ]


def test_shared_prompt_rows_score_and_train_like_separate_rows(tiny):
    """One row per pair (prompt once, block-causal mask) gives the scores, loss and gradients of scoring chosen
    and rejected as separate rows, with fewer tokens."""
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.training import SharedPromptCollator, shared_prompt_scores

    model, tok = load_reward_model(tiny, for_training=True)
    model.eval()  # no dropout: the two passes must see the same network
    feats = pair_features(tok, _varied_pairs(), "large", 128)
    rows = [{k: v[i] for k, v in feats.items()} for i in range(4)]
    plain, packed = PairCollator(tok)(rows), SharedPromptCollator(tok)(rows)
    assert packed["input_ids"].numel() < plain["input_ids"].numel()
    trainer = object.__new__(_trainer_class())
    trainer.safety_term_weight, trainer.center_rewards = 0.5, 0.1  # every loss term on
    grads = []
    for batch in (plain, packed):
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    with torch.no_grad():
        ref = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits[:, 0]
        got = shared_prompt_scores(model, packed)
    assert torch.allclose(got, ref, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name


def test_make_trainer_shares_prompts_only_where_exact(tiny, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.training import SharedPromptCollator, make_trainer

    model, tok = load_reward_model(tiny, for_training=True)
    cfg = RewardModelConfig(batch_size=2)
    trainer, _, _ = make_trainer("helpfulness", _varied_pairs(), model, tok, cfg, tmp_path / "a")
    assert isinstance(trainer.data_collator, SharedPromptCollator)
    trainer, _, _ = make_trainer("helpfulness", _varied_pairs(), model, tok, RewardModelConfig(batch_size=2, share_prompt=False),
                                 tmp_path / "b")
    assert isinstance(trainer.data_collator, PairCollator)
    # a bidirectional encoder cannot share a prompt between two responses: separate rows
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                    pad_token_id=tok.pad_token_id))
    trainer, _, _ = make_trainer("helpfulness", _varied_pairs(), bert, tok, cfg, tmp_path / "c")
    assert isinstance(trainer.data_collator, PairCollator)


def test_head_only_rm_trains_on_cached_head_inputs_and_scores_as_saved(tiny, tmp_path):
    """reward_models.train_head_only: the backbone is frozen, each text is encoded once (cached across epochs and
    across RMs), the head learns to rank, and the saved RM scores exactly head(cached input) when reloaded."""
    import torch

    from saferounds.reward_models import training
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    pairs = [_pair(i, chosen=f"Yes, here is a careful and complete answer to question {i}.") for i in range(24)]
    cfg = RewardModelConfig(train_head_only=True, learning_rate=5e-2, epochs=30, batch_size=8, eval_fraction=0.0,
                            min_warmup_steps=0, max_length=32)
    training._HEAD_INPUTS.clear()
    before = load_reward_model(tiny)[0].state_dict()
    m = training.train_reward_model("helpfulness", pairs, tiny, tmp_path / "rm", cfg, heldout=pairs[:8])
    assert m["train_head_only"] and m["steps"] == 30 * 3 and m["texts_encoded"] == 48
    assert m["heldout"]["accuracy"] == 1.0 and m["train_loss"] < 0.69  # the head alone ranks these
    model, tok = load_reward_model(tmp_path / "rm")
    after = model.state_dict()
    head = {k for k in after if not torch.equal(after[k], before[k])}
    assert head and all(k.startswith(("score", "classifier")) for k in head)  # nothing below the head moved
    cache = next(iter(training._HEAD_INPUTS.values()))
    assert len(cache) == 48  # one forward pass per text, however many epochs
    texts = [training.format_sample(tok, p["prompt"], p["chosen"]) for p in pairs[:4]]
    expected = training.scalar_head(model)(torch.stack([cache[t] for t in texts]))[:, 0]
    got = score(model, tok, [p["prompt"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]], max_length=32)
    assert torch.allclose(torch.tensor(got), expected, atol=1e-4)
    # a second RM on the same backbone encodes only its new texts
    training.train_reward_model("helpfulness", pairs + [_pair(99)], tiny, tmp_path / "rm2", cfg)
    assert len(cache) == 50
