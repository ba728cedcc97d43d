"""tracking.report_to (core/tracking.py, issue 29 item 4): a Trainer stage (an RM) and PPO (accelerate's
trackers) log the same curves to TensorBoard and to MLflow's local file store, each under the run
`vN/<stage>`; read back from both stores. An unknown or missing tracker is an InputError naming the key."""
from __future__ import annotations

import logging

import pytest
import torch

from saferounds.core.errors import InputError

torch.set_num_threads(1)
mlflow = pytest.importorskip("mlflow", reason="mlflow not installed: pip install -e '.[trackers]' (CI has it)")
pytest.importorskip("tensorboard", reason="tensorboard not installed (the [dev] extra has it)")


def _pairs(n: int = 12) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"question {i} about topic {i % 5}"}],
             "chosen": f"a helpful, detailed answer number {i}", "rejected": f"no {i}", "rating": None,
             "margin": None, "safety_label": None, "source": "helpfulness"} for i in range(n)]


def _tensorboard_scalars(run_dir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def _mlflow_runs(store) -> dict[str, dict[str, list[float]]]:
    """{run name: {metric: values by step}} over every experiment of the local file store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.as_uri())
    out = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            out[run.info.run_name] = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k),
                                                                   key=lambda m: m.step)]
                                      for k in run.data.metrics}
    return out


def test_rm_and_ppo_curves_reach_tensorboard_and_mlflow(tiny_models, tmp_path, monkeypatch):
    from saferounds.core.tracking import runs_dir, tracking
    from saferounds.reward_models.config import RewardModelConfig
    from saferounds.reward_models.training import train_reward_model

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    ws = tmp_path / "ws"
    rm_runs = runs_dir(ws, "v1", "rm-helpfulness")
    cfg = RewardModelConfig(batch_size=4, max_length=48, save_steps=100, logging_steps=1, min_warmup_steps=0,
                            eval_fraction=0.0)
    with tracking(["tensorboard", "mlflow"], ws):
        metrics = train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], tmp_path / "rm", cfg,
                                     max_steps=3, seed=0, runs=rm_runs)
        _tiny_ppo(tiny_models, ws, tmp_path)
    assert metrics["steps"] == 3
    tb = _tensorboard_scalars(rm_runs)
    assert len(tb["train/loss"]) == 3 and all(v > 0 for v in tb["train/loss"])
    ml = _mlflow_runs(ws / "runs" / "mlruns")  # the workspace's own store: no MLFLOW_TRACKING_URI was set
    assert set(ml) == {"v1/rm-helpfulness", "v1/ppo"}
    assert ml["v1/rm-helpfulness"]["loss"] == pytest.approx(tb["train/loss"], rel=1e-5)  # one curve, two stores
    ppo_tb = _tensorboard_scalars(ws / "runs" / "v1" / "ppo")
    assert len(ppo_tb["kl"]) == 2 and ml["v1/ppo"]["kl"] == pytest.approx(ppo_tb["kl"], rel=1e-5)


def _tiny_ppo(tiny_models, ws, tmp_path) -> None:
    from saferounds.core.tracking import runs_dir
    from saferounds.pipeline.training.config import PPOConfig
    from saferounds.pipeline.training.ppo import make_accelerator, train_ppo
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(tiny_models["policy"])
    tok = AutoTokenizer.from_pretrained(tiny_models["policy"])
    prompts = [{"messages": [{"role": "user", "content": f"question {i}"}], "is_safety": False} for i in range(4)]
    cfg = PPOConfig(steps=2, batch_size=2, mini_batch_size=2, rollout_batch_size=2, max_new_tokens=3,
                    save_every=100)
    accelerator = make_accelerator(runs_dir(ws, "v1", "ppo").parent)
    train_ppo(policy, tok, prompts, lambda p, r: (torch.zeros(len(r)), None), cfg, accelerator=accelerator,
              work_dir=tmp_path / "ppo-work", log_path=tmp_path / "ppo_log.jsonl", logger=logging.getLogger("t"))


def test_an_unknown_or_missing_tracker_names_the_key(tmp_path, monkeypatch):
    import importlib.util

    from saferounds.core.tracking import report_to, tracking

    with pytest.raises(InputError, match=r"tracking\.report_to: unknown tracker\(s\) 'tensorbored'"):
        with tracking(["tensorbored"], tmp_path):
            pass
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with tracking(["tensorboard", "wandb"], tmp_path), pytest.raises(InputError, match=r"tracking\.report_to: wandb"):
        report_to(tmp_path / "runs" / "v1" / "sft")


def test_the_workspace_store_is_set_only_inside_the_stage(tmp_path, monkeypatch):
    import os

    from saferounds.core.tracking import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracking(["mlflow"], tmp_path / "ws"):
        assert os.environ["MLFLOW_TRACKING_URI"] == (tmp_path / "ws" / "runs" / "mlruns").resolve().as_uri()
        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "ws"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    with tracking(["mlflow"], tmp_path / "ws"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"  # the user's server wins
