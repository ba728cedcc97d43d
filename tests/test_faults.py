"""Fault injection (issue 18): diverged training, torn checkpoints, interrupted discards, a symlinked lock,
a full disk. Each case reproduces a failure that once let a broken run pass as a finished, safe version.

Tiny models, a few steps each; the workspace cases reuse the `tiny_workspace` fixture.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import DivergedError
from reward_models.config import RewardModelConfig


def _pairs(n: int = 24) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"question {i} about topic {i % 5}"}],
             "chosen": f"a helpful, detailed answer number {i}", "rejected": f"no {i}", "rating": None,
             "margin": None, "safety_label": None, "source": "helpfulness"} for i in range(n)]


def _rm_cfg(**kw) -> RewardModelConfig:
    base = dict(batch_size=4, max_length=48, save_steps=2, logging_steps=1, min_warmup_steps=0, eval_fraction=0.0)
    return RewardModelConfig(**{**base, **kw})


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


# ---------------------------------------------------------------------------------------------
# 8. RM training is reproducible

def test_rm_training_twice_gives_identical_weights(tiny_models, tmp_path):
    """The tiny preset's RMs start from the SFT policy (model.reward_model: v0), whose scalar head is
    initialised fresh: that init was unseeded, so two identical runs trained different RMs."""
    from reward_models.training import train_reward_model

    outs = []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever the caller did to the global RNG before
        out = tmp_path / f"rm{i}"
        train_reward_model("helpfulness", _pairs(), tiny_models["policy"], out, _rm_cfg(), max_steps=5, seed=3)
        outs.append(_weights(out))
    assert outs[0].keys() == outs[1].keys()
    different = [k for k in outs[0] if not torch.equal(outs[0][k], outs[1][k])]
    assert different == []


# ---------------------------------------------------------------------------------------------
# 1. NaN in each training stage

def test_rm_training_at_a_diverging_learning_rate_fails_naming_stage_and_step(tiny_models, tmp_path):
    from reward_models.training import train_reward_model

    out = tmp_path / "rm"
    with pytest.raises(DivergedError) as e:
        train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], out,
                           _rm_cfg(learning_rate=1e12, max_grad_norm=0.0), max_steps=8)
    assert "helpfulness RM" in str(e.value) and "step" in str(e.value) and e.value.step is not None
    assert not (out / "manifest.json").exists()  # never marked done


def _sft_examples(n: int = 16) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"say something about {i}"}],
             "completion": f"here is a sentence about {i} and more words"} for i in range(n)]


def _train_cfg(**kw):
    from pipeline.training.config import TrainConfig

    base = dict(epochs=1.0, batch_size=4, max_length=48, save_steps=1, logging_steps=1)
    return TrainConfig(**{**base, **kw})


def test_sft_and_rs_finetune_at_a_diverging_learning_rate_fail(tiny_models, tmp_path):
    from pipeline.config import Config
    from pipeline.training.sft import finetune

    cfg = Config()
    with pytest.raises(DivergedError) as e:
        finetune(tiny_models["policy"], _sft_examples(), _train_cfg(learning_rate=1e12), cfg.model,
                 tmp_path / "out", tmp_path / "work", stage="v1 rs fine-tune")
    assert str(e.value).startswith("v1 rs fine-tune: diverged at step ")
    assert not (tmp_path / "out").exists()


def test_injected_nan_loss_in_sft_is_caught_before_the_weights_change(tiny_models, tmp_path, monkeypatch):
    from transformers import Trainer

    from pipeline.config import Config
    from pipeline.training.sft import finetune

    real = Trainer.compute_loss
    calls = {"n": 0}

    def nan_on_third(self, model, inputs, *a, **kw):
        loss = real(self, model, inputs, *a, **kw)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(Trainer, "compute_loss", nan_on_third)
    with pytest.raises(DivergedError) as e:
        finetune(tiny_models["policy"], _sft_examples(), _train_cfg(learning_rate=1e-4), Config().model,
                 tmp_path / "out", tmp_path / "work", stage="sft")
    assert e.value.step == 3 and "gradient norm" in str(e.value)


def test_rm_that_scores_nan_is_refused_and_no_sample_is_selected(monkeypatch):
    """An RM trained to NaN used to have its NaN-scored samples "selected" and fine-tuned on."""
    import sampling.scoring as scoring
    from reward_models.config import GateConfig

    monkeypatch.setattr(scoring, "score", lambda model, tok, prompts, responses, **kw: [float("nan")] * len(responses))
    samples = [{"prompt_id": "p", "sample_index": i, "messages": [{"role": "user", "content": "q"}],
                "response": f"r{i}"} for i in range(3)]
    with pytest.raises(DivergedError, match="scoring: diverged: the helpfulness RM's score of 3 of 3"):
        scoring.score_samples(samples, (None, None), (None, None), GateConfig())
    assert all("gated_score" not in s for s in samples)


def test_ppo_at_a_diverging_learning_rate_fails_with_the_step_not_a_traceback(tiny_models, tmp_path):
    from pipeline.models import load_policy
    from pipeline.training.config import PPOConfig
    from pipeline.training.ppo import train_ppo

    policy, tok = load_policy(tiny_models["policy"], _model_cfg(), for_training=True)
    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"tell me about {i}"}], "is_safety": False}
               for i in range(4)]
    cfg = PPOConfig(steps=3, batch_size=4, mini_batch_size=2, rollout_batch_size=4, max_new_tokens=6,
                    learning_rate=1e12, max_grad_norm=0.0, save_every=1)

    def score_fn(ps, texts):
        return torch.tensor([float(len(t)) for t in texts]), None

    with pytest.raises(DivergedError) as e:
        train_ppo(policy, tok, prompts, score_fn, cfg, work_dir=tmp_path / "work", log_path=tmp_path / "log.jsonl")
    assert str(e.value).startswith("ppo: diverged at step ") and e.value.step >= 1


def test_ppo_resumes_past_a_torn_checkpoint(tiny_models, tmp_path):
    from pipeline.models import load_policy
    from pipeline.training.config import PPOConfig
    from pipeline.training.ppo import train_ppo

    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"q {i}"}], "is_safety": False}
               for i in range(4)]
    cfg = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, rollout_batch_size=4, max_new_tokens=4, save_every=1)
    score_fn = lambda ps, texts: (torch.tensor([float(len(t)) for t in texts]), None)  # noqa: E731
    policy, tok = load_policy(tiny_models["policy"], _model_cfg(), for_training=True)
    work = tmp_path / "work"
    train_ppo(policy, tok, prompts, score_fn, cfg, work_dir=work, log_path=tmp_path / "log.jsonl")
    latest = work / (work / "latest").read_text().strip()
    (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:100])  # torn by a kill mid-save
    policy, tok = load_policy(tiny_models["policy"], _model_cfg(), for_training=True)
    _, summary = train_ppo(policy, tok, prompts, score_fn, cfg, work_dir=work, log_path=tmp_path / "log.jsonl")
    assert summary["steps_done"] == 2 and (work / f"{latest.name}.torn" / "TORN.txt").exists()


def _model_cfg():
    from pipeline.config import Config

    return Config().model


# ---------------------------------------------------------------------------------------------
# 2. Torn checkpoints

def _tear(work: Path, how: str) -> Path:
    """The newest checkpoint-N, torn the way a kill -9 or a full disk tears it."""
    newest = max(work.glob("checkpoint-[0-9]*"), key=lambda p: int(p.name.split("-")[1]))
    torn = work / f"checkpoint-{int(newest.name.split('-')[1]) + 1}"
    if how == "empty":
        torn.mkdir()
    else:
        shutil.copytree(newest, torn)
        w = torn / "model.safetensors"
        if how == "truncated":
            w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        else:  # the save stopped before trainer_state.json
            (torn / "trainer_state.json").unlink()
    return torn


def test_last_complete_checkpoint_sets_torn_ones_aside(tiny_models, tmp_path):
    from core.checkpoints import last_complete_checkpoint, torn_notes
    from pipeline.training.sft import finetune

    work = tmp_path / "work"
    finetune(tiny_models["policy"], _sft_examples(8), _train_cfg(), _model_cfg(), tmp_path / "out", work)
    good = max(work.glob("checkpoint-[0-9]*"), key=lambda p: int(p.name.split("-")[1]))
    torn = [_tear(work, how) for how in ("no-state",)]
    torn.append(_tear(work, "truncated"))
    torn.append(_tear(work, "empty"))
    assert last_complete_checkpoint(work) == str(good)
    assert sorted(n["checkpoint"] for n in torn_notes(work)) == sorted(t.name for t in torn)
    assert all((work / f"{t.name}.torn" / "TORN.txt").exists() and not t.exists() for t in torn)


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_sft_resumes_past_a_torn_checkpoint(tiny_models, tmp_path, how):
    """Was: every later run failed with "Can't find a valid checkpoint" for good."""
    from pipeline.training.sft import finetune

    work = tmp_path / "work"
    finetune(tiny_models["policy"], _sft_examples(8), _train_cfg(), _model_cfg(), tmp_path / "out", work,
             stage="v1 rs fine-tune")
    torn = _tear(work, how)
    metrics = finetune(tiny_models["policy"], _sft_examples(8), _train_cfg(), _model_cfg(), tmp_path / "out2",
                       work, stage="v1 rs fine-tune")
    assert metrics["resumed_from"] == f"checkpoint-{int(torn.name.split('-')[1]) - 1}"
    assert [n["checkpoint"] for n in metrics["torn_checkpoints"]] == [torn.name]


def test_rm_training_resumes_past_a_torn_checkpoint(tiny_models, tmp_path):
    from reward_models.training import train_reward_model

    work = tmp_path / "work"
    train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], tmp_path / "a", _rm_cfg(), work_dir=work,
                       max_steps=4)
    torn = _tear(work, "truncated")
    m = train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], tmp_path / "b", _rm_cfg(),
                           work_dir=work, max_steps=4)
    assert Path(m["resumed_from"]).name == "checkpoint-4" and m["torn_checkpoints"][0]["checkpoint"] == torn.name
