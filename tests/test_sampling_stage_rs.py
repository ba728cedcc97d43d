"""The `rs` stage on the tiny preset: v1 with an `auto` temperature sweep, then v2 pooled with v1's kept
samples (re-scored with v2's RMs). Checks the files it writes and the numbers it reports."""
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from saferounds.core.io import read_jsonl
from saferounds.pipeline.stages import StageContext
from saferounds.pipeline.workspace import Workspace
from saferounds.sampling.curves import max_of_k_curve
from saferounds.sampling.rejection import best_of_k

torch.set_num_threads(1)


def write_workspace(root: Path, pool="all", temperature="auto") -> Workspace:
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"question {i}: " + "why " * (i % 3)}],
                "is_safety": i % 4 == 0} for i in range(6)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    cfg = {"seed": 3, "data": {"prompts": ["prompts.jsonl"]},
           "sft": {"max_length": 64, "save_steps": 1000, "logging_steps": 1000},
           "rejection_sampling": {"k": 3, "temperature": temperature, "max_new_tokens": 6, "batch_size": 4,
                                  "pool": pool, "auto_temperatures": [0.5, 1.5], "auto_prompts": 2,
                                  "finetune": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 4}}}
    (root / "saferounds.yaml").write_text(yaml.safe_dump(cfg))
    return Workspace(root)


def ctx_for(ws, version, parent, rm, prior):
    d = ws.root / "versions" / f"v{version}"
    d.mkdir(parents=True, exist_ok=True)
    return StageContext(workspace=ws, config=ws.config, version=version, dir=d, parent_policy=parent,
                        rm_paths={"helpfulness": rm, "safety": rm}, prior_versions=prior,
                        log=logging.getLogger("test"))


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    from saferounds.pipeline.stages.rs import run
    from saferounds.data.tiny import build_tiny

    root = tmp_path_factory.mktemp("ws")
    paths = build_tiny(root / "tiny")
    ws = write_workspace(root)
    m1 = run(ctx_for(ws, 1, paths["policy"], paths["reward_model"], []))
    v1 = ws.root / "versions" / "v1"
    m2 = run(ctx_for(ws, 2, v1 / "rs_policy", paths["reward_model"], [v1]))
    return ws, m1, m2


def test_v1_writes_samples_selection_curve_and_policy(rounds):
    ws, m1, _ = rounds
    v1 = ws.root / "versions" / "v1"
    samples = read_jsonl(v1 / "samples.jsonl")
    selected = read_jsonl(v1 / "selected.jsonl")
    assert len(samples) == 6 * 3 and len(selected) == 6
    for s in samples:
        assert {"helpfulness", "safety", "safety_sigmoid", "gate_branch", "gated_logit", "gated_score",
                "origin_version", "num_tokens"} <= set(s)
        assert s["safety_sigmoid"] == pytest.approx(1 / (1 + torch.exp(torch.tensor(-s["safety"])).item()))
        if s["is_safety"]:
            assert s["gate_branch"] == "safety"
    # R~ is whitened over the round: mean 0, and each selection is the best of its prompt's K samples
    assert sum(s["gated_score"] for s in samples) / len(samples) == pytest.approx(0, abs=1e-5)
    assert [(x["prompt_id"], x["sample_index"]) for x in best_of_k(samples)] == \
           [(x["prompt_id"], x["sample_index"]) for x in selected]
    assert all(x["origin_version"] == 1 and x["selected_in"] == 1 and x["completion"] is not None for x in selected)
    # the auto sweep ran on 2 held-out prompts and its choice is the temperature the samples used
    sweep = m1["temperature_sweep"]
    assert set(sweep["mean_max_of_k"]) == {"0.5", "1.5"}
    best = max(sweep["mean_max_of_k"], key=lambda t: sweep["mean_max_of_k"][t])
    assert m1["temperature"] == float(best) == samples[0]["temperature"]
    curve = json.loads((v1 / "max_of_k.json").read_text())
    assert curve["points"] == max_of_k_curve(samples, "gated_logit")
    assert [p[0] for p in m1["max_of_k"]] == [1, 2, 3]
    assert m1["max_of_k"][2][1] >= m1["max_of_k"][0][1]  # E[max of 3] >= E[one sample]
    assert m1["selected_by_origin"] == {"v1": 6}
    assert m1["selected_mean_gated_logit"] >= m1["mean_gated_logit"]
    assert (v1 / "rs_policy" / "config.json").exists() and m1["finetune"]["examples"] == 6


def test_v2_pools_v1_kept_samples_rescored(rounds):
    ws, m1, m2 = rounds
    v1, v2 = ws.root / "versions" / "v1", ws.root / "versions" / "v2"
    kept = {(x["prompt_id"], x["sample_index"]): x for x in read_jsonl(v1 / "selected.jsonl")}
    current = read_jsonl(v2 / "samples.jsonl")
    selected = read_jsonl(v2 / "selected.jsonl")
    assert m2["candidates"] == 18 + 6 and m2["candidates_from_earlier"] == 6
    assert sum(m2["selected_by_origin"].values()) == 6
    # same RMs in both rounds here, so re-scoring reproduces v1's raw scores and gated logits
    for x in selected:
        if x["origin_version"] == 1:
            old = kept[(x["prompt_id"], x["sample_index"])]
            assert x["gated_logit"] == pytest.approx(old["gated_logit"], abs=1e-5)
            assert x["completion"] == old["completion"]
    # the pick per prompt is the best over v2's K samples and v1's kept one, on one (logit) scale
    for x in selected:
        pool = [s["gated_logit"] for s in current if s["prompt_id"] == x["prompt_id"]]
        pool += [k["gated_logit"] for (pid, _), k in kept.items() if pid == x["prompt_id"]]
        assert x["gated_logit"] == pytest.approx(max(pool), abs=1e-5)
    assert (v2 / "rs_policy" / "config.json").exists()


def test_resume_after_selection_skips_to_the_finished_outputs(rounds):
    from saferounds.pipeline.stages.rs import run

    ws, _, m2 = rounds
    v2 = ws.root / "versions" / "v2"
    before = {p.name: p.read_bytes() for p in v2.iterdir() if p.is_file()}
    again = run(ctx_for(ws, 2, ws.root / "versions" / "v1" / "rs_policy", ws.root / "tiny" / "reward_model",
                        [ws.root / "versions" / "v1"]))
    assert {p.name: p.read_bytes() for p in v2.iterdir() if p.is_file()} == before
    assert again["selected_by_origin"] == m2["selected_by_origin"] and again["finetune"] == m2["finetune"]


def test_judge_as_the_reward_selects_by_its_score_without_reward_models(tmp_path, monkeypatch):
    """rejection_sampling.reward: judge — direct AI feedback ranks the K samples; no RM is loaded."""
    import contextlib

    from saferounds.reward_models.feedback import judges, labeling
    from saferounds.pipeline.stages.rs import run
    from saferounds.data.tiny import build_tiny

    paths = build_tiny(tmp_path / "tiny")
    ws = write_workspace(tmp_path, temperature=1.0)
    cfg = yaml.safe_load((tmp_path / "saferounds.yaml").read_text())
    cfg["rejection_sampling"]["reward"] = ["judge"]
    (tmp_path / "saferounds.yaml").write_text(yaml.safe_dump(cfg))
    ws = Workspace(tmp_path)
    calls = []

    def fake_scores(judge, prompts, responses, progress=None):
        calls.append(len(responses))
        # longer answers score higher; the first sample of q0 gets no parseable verdict (None)
        return [None if (p["prompt_id"], p["sample_index"]) == ("q0", 0) else min(len(r), 50) / 50
                for p, r in zip(prompts, responses)]

    monkeypatch.setattr(judges, "make_judge", lambda cfg, cache_path=None: contextlib.nullcontext(object()))
    monkeypatch.setattr(labeling, "judge_scores", fake_scores)
    ctx = ctx_for(ws, 1, paths["policy"], paths["reward_model"], [])
    ctx.rm_paths = {}
    m = run(ctx)
    v1 = ws.root / "versions" / "v1"
    samples, selected = read_jsonl(v1 / "samples.jsonl"), read_jsonl(v1 / "selected.jsonl")
    assert calls == [18] and m["reward"] == "judge" and len(selected) == 6
    for row in selected:
        mine = [s for s in samples if s["prompt_id"] == row["prompt_id"] and s["judge_score"] is not None]
        assert row["score"] == row["judge_score"] == max(s["judge_score"] for s in mine)
    assert not any(r["prompt_id"] == "q0" and r["sample_index"] == 0 for r in selected)
    assert "gated_score" not in samples[0] and (v1 / "rs_policy" / "config.json").exists()


def test_a_chance_level_reward_model_triggers_the_warning(tmp_path):
    """rs says in one line when an RM's held-out interval includes 0.5 (issue 27), and stays quiet when both rank."""
    import json

    from saferounds.pipeline.stages.rs import rm_chance_note

    def rm(name, held):
        d = tmp_path / name
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"metrics": {"heldout": held}}))
        return d

    good = {"n": 400, "accuracy": 0.7, "ci95": [0.653, 0.743]}
    chance = {"n": 23, "accuracy": 0.52, "ci95": [0.33, 0.71]}
    assert rm_chance_note({"helpfulness": rm("h", good), "safety": rm("s", good)}) is None
    note = rm_chance_note({"helpfulness": rm("h2", chance), "safety": rm("s2", good)})
    assert note.startswith("reward models at chance: helpfulness RM held-out accuracy 0.52 [0.33, 0.71] on 23 pairs")
    assert "safety" not in note and "\n" not in note
    assert "safety RM held-out accuracy not measured" in rm_chance_note({"safety": rm("s3", None)})
