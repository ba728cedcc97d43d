"""The PPO loop on the tiny preset: it raises the gated score on held-out prompts with bounded KL,
resumes with the same data order, logs every step, and keeps one model with LoRA."""
import copy
import json

import pytest
import torch

from saferounds.core.errors import InputError
from saferounds.data.tiny import build_tiny
from saferounds.pipeline.training.config import PPOConfig
from saferounds.pipeline.training.ppo import batch_indices, train_ppo
from saferounds.pipeline.training.ppo_sampling import encode_prompts, generate, left_pad
from saferounds.reward_models.gating import gated_reward

torch.set_num_threads(1)
VOWELS = set("aeiou ")
TOPICS = ["cats", "rain", "maps", "tea", "math", "bikes", "songs", "trees", "boats", "bread", "stars", "clocks"]


def prompt(i, topic):
    return {"id": str(i), "messages": [{"role": "user", "content": f"Tell me about {topic} #{i}"}],
            "is_safety": i % 3 == 0, "category": None, "reference": None}


TRAIN = [prompt(i, TOPICS[i % 8]) for i in range(32)]
HELDOUT = [prompt(100 + i, TOPICS[8 + i % 4]) for i in range(16)]


def gated_score(prompts, texts):
    """Two deterministic, trivially learnable 'reward models' through the real LLaMA 2 gate:
    helpfulness likes vowels and spaces, safety likes them too but less steeply."""
    frac = torch.tensor([sum(c in VOWELS for c in t) / max(len(t), 1) for t in texts])
    return gated_reward(4 * frac - 1, 8 * frac - 2, [p["is_safety"] for p in prompts], whitening=False)


@torch.no_grad()
def mean_score(policy, tokenizer, prompts, score_fn, cfg):
    """Mean raw gated score of the policy's sampled responses on held-out prompts."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(policy.parameters()).device
    q_ids, q_mask = left_pad(encode_prompts(tokenizer, prompts), pad_id)
    r_ids, _ = generate(policy, q_ids.to(device), q_mask.to(device), cfg, pad_id, tokenizer.eos_token_id)
    score, _ = score_fn(prompts, tokenizer.batch_decode(r_ids.tolist(), skip_special_tokens=True))
    return float(torch.as_tensor(score, dtype=torch.float32).mean())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = build_tiny(tmp_path_factory.mktemp("tiny"))
    tok = AutoTokenizer.from_pretrained(paths["policy"])

    def load():
        return AutoModelForCausalLM.from_pretrained(paths["policy"])
    return paths, tok, load


def small_cfg(**kw):
    base = dict(steps=4, batch_size=8, mini_batch_size=4, rollout_batch_size=8, learning_rate=1e-3,
                beta=0.05, max_new_tokens=6, save_every=2)
    return PPOConfig(**{**base, **kw})


def test_ppo_raises_heldout_gated_score_with_bounded_kl(tiny, tmp_path):
    _, tok, load = tiny
    policy = load()
    cfg = PPOConfig(steps=20, batch_size=16, mini_batch_size=4, ppo_epochs=2, rollout_batch_size=16,
                    learning_rate=3e-3, beta=0.05, max_new_tokens=12, save_every=100)
    torch.manual_seed(0)
    before = sum(mean_score(policy, tok, HELDOUT, gated_score, cfg) for _ in range(3)) / 3
    policy, summary = train_ppo(policy, tok, TRAIN, gated_score, cfg, log_path=tmp_path / "log.jsonl")
    torch.manual_seed(0)
    after = sum(mean_score(policy, tok, HELDOUT, gated_score, cfg) for _ in range(3)) / 3
    log = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21))
    assert after > before + 0.3, (before, after)  # logit(R_c) units; seen: 1.16 -> 1.63
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # step 1 samples from pi_0 itself
    assert max(r["kl"] for r in log) < 25.0  # nats per 12-token response; seen: 13
    assert sum(r["score"] for r in log[-5:]) / 5 > sum(r["score"] for r in log[:5]) / 5 + 0.2


def test_log_has_every_metric(tiny, tmp_path):
    _, tok, load = tiny
    train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=2), log_path=tmp_path / "log.jsonl")
    rows = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in ("score", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "policy_loss",
                "share_safety_branch", "share_helpfulness_branch", "response_length"):
        assert key in rows[0], key
    assert rows[0]["share_safety_branch"] + rows[0]["share_helpfulness_branch"] == pytest.approx(1.0)
    assert 0 < rows[0]["response_length"] <= 6


def test_interrupted_run_resumes_to_the_same_weights(tiny, tmp_path):
    _, tok, load = tiny
    straight, _ = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(), work_dir=tmp_path / "a",
                            log_path=tmp_path / "a.jsonl")
    # "interrupt" after step 2 (a checkpoint), then run again with the same work dir
    train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=2), work_dir=tmp_path / "b",
              log_path=tmp_path / "b.jsonl")
    assert (tmp_path / "b" / "latest").read_text() == "step_000002"
    resumed, summary = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(), work_dir=tmp_path / "b",
                                 log_path=tmp_path / "b.jsonl")
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    a = [json.loads(l) for l in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["score"] for r in a] == [r["score"] for r in b]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["latest", "step_000004"]


def test_batch_order_depends_only_on_seed_and_step():
    first = [batch_indices(10, 4, s, seed=3) for s in range(5)]
    assert first == [batch_indices(10, 4, s, seed=3) for s in range(5)]
    flat = sum(first, [])
    assert sorted(flat[:10]) == list(range(10))  # an epoch covers every prompt once
    assert first != [batch_indices(10, 4, s, seed=4) for s in range(5)]


def test_max_kl_ends_the_run_early_with_a_message(tiny):
    _, tok, load = tiny
    seen = []
    _, summary = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=6, learning_rate=5e-3, max_kl=1e-3),
                           progress=seen.append)
    assert summary["stopped_early"] and 1 <= summary["steps_done"] < 6
    assert summary["kl_at_stop"] > 1e-3
    assert f"before step {summary['steps_done'] + 1} of 6" in summary["stop_message"]
    assert "passed ppo.max_kl 0.001" in summary["stop_message"] and summary["stop_message"] in seen


def test_pooled_refusal_rate_counts_the_last_steps_and_waits_for_enough_rollouts():
    from saferounds.pipeline.training.ppo import pooled_refusal_rate

    window = [(0, 4), (3, 5), (6, 6)]
    assert pooled_refusal_rate(window, 2) == (9 / 11, 9, 11)  # the first step is outside the window
    assert pooled_refusal_rate(window, 3) == (9 / 15, 9, 15)
    assert pooled_refusal_rate(window[:1], 3) is None  # 4 rollouts: too few to judge
    assert pooled_refusal_rate([(2, 8)], 1, min_rollouts=8) == (0.25, 2, 8)


def test_max_refusal_rate_stops_ppo_when_helpful_rollouts_turn_to_refusals(tiny, tmp_path, monkeypatch):
    """A stand-in refusal verdict flags every rollout: with ppo.max_refusal_rate 0.5 PPO stops as soon as the
    pooled helpful-branch rollouts reach 8 (8 prompts a step, a third tagged safety: step 2), before that step's
    update, says why, writes ppo_stop.json and keeps the policy of the step before. Without the limit, the same
    verdict stops nothing."""
    from saferounds.pipeline.training import ppo

    monkeypatch.setattr(ppo, "is_refusal", lambda text: True)
    _, tok, load = tiny
    seen = []
    _, summary = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=4, max_refusal_rate=0.5),
                           progress=seen.append, log_path=tmp_path / "log.jsonl")
    assert summary["stopped_early"] and summary["stop_reason"] == "refusal" and summary["refusal_at_stop"] == 1.0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert summary["steps_done"] == len(log) == 1  # step 1 alone holds fewer than 8 helpful-branch rollouts
    assert 0 < 8 * log[0]["share_helpfulness_branch"] < 8
    assert "past ppo.max_refusal_rate 50%" in summary["stop_message"] and summary["stop_message"] in seen
    assert "before step 2 of 4" in summary["stop_message"]
    stop = json.loads((tmp_path / "ppo_stop.json").read_text())
    assert stop["stop_reason"] == "refusal" and stop["before_step"] == 2
    _, free = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=2))
    assert not free["stopped_early"] and free["steps_done"] == 2


def test_kl_stop_is_a_deprecated_alias_of_max_kl(tiny, caplog):
    from saferounds.pipeline.config import parse_config

    assert PPOConfig(kl_stop=2.0).kl_limit == 2.0 and PPOConfig(max_kl=1.5).kl_limit == 1.5
    assert PPOConfig(max_kl=1.5, kl_stop=1.5).kl_limit == 1.5
    with pytest.raises(InputError, match="kl_stop: 3.0 is the deprecated name of max_kl"):
        parse_config({"ppo": {"max_kl": 2.0, "kl_stop": 3.0}})
    _, tok, load = tiny
    with caplog.at_level("WARNING"):
        _, summary = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=6, learning_rate=5e-3, kl_stop=1e-3))
    assert summary["stopped_early"] and summary["steps_done"] < 6
    assert "ppo.kl_stop is deprecated" in caplog.text


def test_each_step_logs_the_refusal_rate_of_its_rollouts(tiny, tmp_path, monkeypatch):
    """The step log's refusal_rate is the share of that step's rollouts the refusal verdict flags (here a
    stand-in verdict, so the expected share is computed from the very texts the reward saw), per branch too."""
    from saferounds.pipeline.training import ppo

    monkeypatch.setattr(ppo, "is_refusal", lambda text: len(text) % 2 == 0)
    calls = []

    def recording(prompts, texts):
        score, used_safety = gated_score(prompts, texts)  # the gate's branch per response
        calls.append([(bool(s), len(t) % 2 == 0) for s, t in zip(used_safety, texts)])
        return score, used_safety
    _, tok, load = tiny
    train_ppo(load(), tok, TRAIN, recording, small_cfg(steps=3), log_path=tmp_path / "log.jsonl")
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == len(calls) == 3  # one rollout chunk per step (rollout_batch_size == batch_size)
    for row, step in zip(log, calls):
        assert row["refusal_rate"] == pytest.approx(sum(r for _, r in step) / len(step))
        safety = [r for s, r in step if s]
        assert row["refusal_rate_safety"] == pytest.approx(sum(safety) / len(safety) if safety else 0.0)
        assert {"kl", "score", "response_length"} <= set(row)
    assert 0 < sum(row["refusal_rate"] for row in log) < 3  # the stand-in flags some rollouts, not all


def test_lora_reference_is_the_disabled_adapter(tiny, monkeypatch):
    from peft import LoraConfig, get_peft_model

    _, tok, load = tiny
    policy = get_peft_model(load(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                               task_type="CAUSAL_LM"))
    real_deepcopy = copy.deepcopy

    def no_model_copies(obj, *a, **k):
        assert not isinstance(obj, torch.nn.Module), "a second copy of the policy"
        return real_deepcopy(obj, *a, **k)
    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    trained, summary = train_ppo(policy, tok, TRAIN, gated_score, small_cfg(steps=2, learning_rate=1e-2))
    assert summary["last"]["kl"] != 0.0  # the adapter moved away from its disabled self
    base = dict(load().named_parameters())
    frozen = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p
              for n, p in trained.named_parameters() if "lora_" not in n}
    assert frozen.keys() == base.keys()
    for name, p in frozen.items():
        assert torch.equal(p, base[name]), name  # the base weights (= pi_0) never changed


def test_separate_critic(tiny):
    from transformers import AutoModelForSequenceClassification

    paths, tok, load = tiny
    critic = AutoModelForSequenceClassification.from_pretrained(paths["reward_model"], num_labels=1)
    before = copy.deepcopy(critic.score.weight)
    _, summary = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=2, value_model="critic"),
                           critic=critic)
    assert summary["steps_done"] == 2
    assert not torch.equal(before, critic.score.weight)  # the critic trains


def test_sizes_are_checked(tiny):
    _, tok, load = tiny
    with pytest.raises(InputError, match="ppo.mini_batch_size"):
        train_ppo(load(), tok, TRAIN, gated_score, small_cfg(mini_batch_size=3))


def test_sampling_pass_gives_the_forward_pass_logprobs_and_values(tiny):
    """ppo.rollout_logprobs: sampling keeps log pi and V from the decode steps; they must equal the separate
    forward's (left-padded prompts of different lengths, rows that stop at EOS early)."""
    from saferounds.pipeline.training.ppo_math import logprobs_of
    from saferounds.pipeline.training.ppo_model import PolicyAndValue, forward_response, trim
    from saferounds.pipeline.training.ppo_sampling import generate_scored

    _, tok, load = tiny
    model = PolicyAndValue(load()).eval()
    torch.nn.init.normal_(model.value_head.weight, std=0.5)  # a value head that is not all zeros
    cfg = small_cfg(max_new_tokens=10, temperature=0.7)
    q_ids, q_mask = left_pad(encode_prompts(tok, TRAIN[:6] + [prompt(7, "a much longer topic " * 3)]), tok.pad_token_id)
    torch.manual_seed(1)
    first, _, _, _ = generate_scored(model, q_ids, q_mask, cfg, tok.pad_token_id, tok.eos_token_id)
    stop = int(first[:, 3].mode().values)  # a token the tiny model does sample: rows end early at it
    torch.manual_seed(1)
    r_ids, r_mask, logp, values = generate_scored(model, q_ids, q_mask, cfg, tok.pad_token_id, stop)
    assert (q_mask == 0).any() and r_mask.sum(1).min() < r_mask.shape[1]  # padding on both sides was exercised
    q_ids, q_mask, r_ids2, r_mask2 = trim(q_ids, q_mask, r_ids, r_mask)
    assert torch.equal(r_ids2, r_ids)
    with torch.no_grad():
        logits, ref_values = forward_response(model, q_ids, q_mask, r_ids, r_mask, cfg.temperature)
    m = r_mask.bool()
    assert torch.allclose(logp[m], logprobs_of(logits, r_ids)[m], atol=1e-4)
    assert torch.allclose(values[m], ref_values[m], atol=1e-4)
    assert values[m].std() > 0.01  # the head really read the hidden states


def test_rollout_logprobs_setting_picks_the_pass(tiny):
    from saferounds.pipeline.training.ppo_sampling import rollout_from_sampling

    _, _, load = tiny
    policy = load()
    assert rollout_from_sampling(small_cfg(), policy) is True  # auto: fp32 policy, value head
    assert rollout_from_sampling(small_cfg(value_model="critic"), policy) is False
    assert rollout_from_sampling(small_cfg(rollout_logprobs="forward"), policy) is False
    assert rollout_from_sampling(small_cfg(), policy.to(torch.bfloat16)) is False  # bf16: rounding differs more
    assert rollout_from_sampling(small_cfg(rollout_logprobs="sampling"), policy) is True


def test_sampling_and_forward_rollouts_train_alike(tiny):
    """The same run with old log-probs from the sampling pass and from a second forward: same samples,
    the same metrics up to float rounding."""
    _, tok, load = tiny
    logs = {}
    for where in ("sampling", "forward"):
        torch.manual_seed(0)
        _, summary = train_ppo(load(), tok, TRAIN, gated_score, small_cfg(steps=2, rollout_logprobs=where))
        logs[where] = summary["last"]
    for key in ("score", "kl", "policy_loss", "value_loss", "entropy", "response_length"):
        assert logs["sampling"][key] == pytest.approx(logs["forward"][key], rel=1e-3, abs=1e-5), key
