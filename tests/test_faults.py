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
