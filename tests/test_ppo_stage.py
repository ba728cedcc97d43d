"""The `ppo` round stage on the tiny preset: writes ppo_policy/ (loadable, LoRA merged), the JSONL
step log and a checkpoint; the reference is chosen without a second copy where LoRA allows."""
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from saferounds.pipeline.stages import StageContext
from saferounds.pipeline.workspace import Workspace

torch.set_num_threads(1)


def workspace(root: Path, lora: bool = False) -> Workspace:
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"question {i}: " + "why " * (i % 3)}],
                "is_safety": i % 4 == 0} for i in range(8)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    cfg = {"seed": 1, "data": {"prompts": ["prompts.jsonl"]},
           "model": {"dtype": "float32", "lora": {"enabled": lora, "r": 4, "alpha": 8}},
           "ppo": {"steps": 3, "batch_size": 4, "mini_batch_size": 2, "rollout_batch_size": 4,
                   "learning_rate": 1e-3, "max_new_tokens": 5, "save_every": 2}}
    (root / "saferounds.yaml").write_text(yaml.safe_dump(cfg))
    return Workspace(root)


def ctx_for(ws, paths):
    d = ws.root / "versions" / ".v5.partial"
    d.mkdir(parents=True, exist_ok=True)
    return StageContext(workspace=ws, config=ws.config, version=5, dir=d, parent_policy=paths["policy"],
                        rm_paths={"helpfulness": paths["reward_model"], "safety": paths["reward_model"]},
                        prior_versions=[], log=logging.getLogger("test"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from saferounds.data.tiny import build_tiny
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("lora", [False, True])
def test_stage_writes_policy_log_and_checkpoint(tiny, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    from saferounds.pipeline.stages.ppo import run

    ws = workspace(tmp_path, lora=lora)
    ctx = ctx_for(ws, tiny)
    metrics = run(ctx)
    assert metrics["ppo_steps"] == 3 and metrics["ppo_start"] == str(tiny["policy"])
    assert metrics["ppo_stopped_early"] is False
    out = ctx.dir / "ppo_policy"
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()  # LoRA merged
    AutoModelForCausalLM.from_pretrained(out)
    rows = [json.loads(l) for l in (ctx.dir / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert (ctx.dir / "work" / "ppo" / "latest").read_text() == "step_000003"
    # every safety prompt (ids 0 and 4) takes the safety branch, whatever the RMs say
    from saferounds.pipeline.training.ppo import batch_indices
    for step, r in enumerate(rows):
        safety_share = sum(i % 4 == 0 for i in batch_indices(8, 4, step, seed=0)) / 4
        assert safety_share <= r["share_safety_branch"] + 1e-6 <= 1.0 + 1e-6


def test_each_stage_starts_from_the_newest_policy_of_its_version(tmp_path):
    """ppo starts from this round's rs_policy/, rs from distill_policy/, eval from the placed policy/;
    a stage never starts from its own output or a later stage's, and without one from v(N-1)'s policy."""
    from saferounds.pipeline.rounds import stage_parent

    ws = workspace(tmp_path)
    (ws.version_dir(4) / "policy").mkdir(parents=True)
    d = ws.partial_dir(5)
    d.mkdir(parents=True)
    parents = lambda: {s: stage_parent(ws, d, 5, s) for s in ("distill", "rs", "ppo", "eval")}  # noqa: E731
    v4 = ws.version_dir(4) / "policy"
    assert parents() == {"distill": v4, "rs": v4, "ppo": v4, "eval": v4}
    (d / "distill_policy").mkdir()
    assert parents() == {"distill": v4, "rs": d / "distill_policy", "ppo": d / "distill_policy",
                         "eval": d / "distill_policy"}
    (d / "rs_policy").mkdir()
    (d / "ppo_policy").mkdir()
    assert parents() == {"distill": v4, "rs": d / "distill_policy", "ppo": d / "rs_policy",
                         "eval": d / "ppo_policy"}
    (d / "ppo_policy").rename(d / "policy")  # the last policy stage's output, placed
    assert parents()["eval"] == d / "policy"


def test_reference_is_shared_only_when_it_is_the_frozen_base(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from saferounds.pipeline.stages.ppo import load_reference
    from saferounds.reward_models.config import ModelConfig

    start, other = Path(tiny["policy"]), tmp_path / "other"
    AutoModelForCausalLM.from_pretrained(start).save_pretrained(other)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(start).save_pretrained(other)
    cfg = ModelConfig(dtype="float32")
    full = AutoModelForCausalLM.from_pretrained(start)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(start),
                          LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert load_reference(full, start, start, cfg) is None  # train_ppo freezes a copy itself
    assert load_reference(lora, start, start, cfg) is None  # adapter disabled = start
    assert load_reference(lora, start, other, cfg) is not None  # e.g. reference: v0, a different model
    assert load_reference(full, start, other, cfg) is not None


def test_missing_reward_models_is_an_input_error(tiny, tmp_path):
    from saferounds.core.errors import InputError
    from saferounds.pipeline.stages.ppo import run

    ctx = ctx_for(workspace(tmp_path), tiny)
    ctx.rm_paths = {}
    with pytest.raises(InputError, match="no helpfulness or safety reward model"):
        run(ctx)
