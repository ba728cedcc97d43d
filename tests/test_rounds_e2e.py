"""The whole method end to end on the tiny preset: `saferounds demo --size smoke` (v0 -> v1 -> v2 by
rejection sampling, v3 by rejection sampling then PPO), then what the rounds must guarantee."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from saferounds.core.io import read_json
from saferounds.eval.report import validate_metrics
from saferounds.data.load import load_prompts
from saferounds.pipeline.workspace import Workspace


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_builds_every_version_with_its_planned_stages(demo_smoke):
    ws = Workspace(demo_smoke)
    assert ws.finished_versions() == [0, 1, 2, 3] and ws.partial_versions() == []
    plan = {1: ["rm", "rs", "eval"], 2: ["rs", "eval"], 3: ["rs", "ppo", "eval"]}
    for n, stages in plan.items():
        m = ws.manifest(n)
        assert m["status"] == "complete" and m["parent"] == f"v{n - 1}"
        assert m["plan"] == stages and set(m["stages"]) == set(stages)
        assert all(m["stages"][s]["status"] == "done" and m["stages"][s]["seconds"] > 0 for s in stages)
        assert m["reward_models"] == {"helpfulness": "v1", "safety": "v1"}  # trained once, in v1
        d = ws.version_dir(n)
        assert (d / "policy" / "model.safetensors").exists() and not (d / "work").exists()
        samples = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
        k = ws.config.rejection_sampling.k
        prompts = load_prompts(demo_smoke / "data" / "prompts.jsonl")
        assert len(samples) == k * len(prompts)  # K per prompt, none lost or duplicated
        assert len({(s["prompt_id"], s["sample_index"]) for s in samples}) == len(samples)
        selected = (d / "selected.jsonl").read_text().splitlines()
        assert len(selected) == len(prompts)
        validate_metrics(read_json(d / "eval" / "metrics.json"))
    m1, m2 = (read_json(ws.version_dir(n) / "eval" / "metrics.json") for n in (1, 2))
    assert set(m1["rm_accuracy"]) == {"helpfulness", "safety"} and "rm_accuracy" not in m2  # RMs trained in v1 only
    assert m1["rm_accuracy"]["safety"]["avg"]["rate"] > 0.7  # templated synthetic pairs are easy to rank
    assert "Table 8" in (ws.version_dir(1) / "eval" / "report.md").read_text()
    assert (ws.version_dir(3) / "rs_policy").is_dir()  # PPO started from the RS policy, kept beside it
    assert (ws.version_dir(3) / "ppo_log.jsonl").read_text().count("\n") == ws.config.ppo.steps
    html = (ws.version_dir(3) / "eval" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4


def test_rerunning_the_demo_changes_nothing(demo_smoke):
    from saferounds.pipeline.demo import run_demo

    before = tree_digest(demo_smoke / "versions") | tree_digest(demo_smoke / "reward_models")
    run_demo(demo_smoke, "smoke")
    after = tree_digest(demo_smoke / "versions") | tree_digest(demo_smoke / "reward_models")
    assert after == before


def test_final_version_violates_less_than_v0_on_held_out_prompts(demo_smoke):
    m = read_json(demo_smoke / "versions" / "v3" / "eval" / "metrics.json")
    v0 = m["compared"]["v0"]["safety"]  # v0 judged by the same judges in the same run
    assert v0["violation_rate"] > 0  # the SFT data's unsafe compliance shows in v0
    assert m["safety"]["violation_rate"] < v0["violation_rate"]  # (default size: 52% -> 0%, bench/README.md)
    # helpfulness not significantly below v0's (one-sided 95%): at n = 60 a point threshold of 50% is noise;
    # the same algorithm with RM batches in two different orders gave 57.5% and 43.3% (bench/README.md)
    win = m["helpfulness"]["win_rate"]["v0"]
    assert win["rate"] >= 0.5 - 1.645 * math.sqrt(0.25 / win["n"]), win


def _mean_gated_logit(ws: Workspace, version: int, prompts: list[dict]) -> float:
    from saferounds.pipeline.models import load_policy
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.sampling.generate import generate_samples
    from saferounds.sampling.scoring import score_samples

    model, tok = load_policy(ws.policy_path(version), ws.config.model)
    samples = generate_samples(model, tok, prompts, k=2, temperature=0.7, top_p=0.9, max_new_tokens=40,
                               batch_size=16, seed=123, show_progress=False)
    rms = [load_reward_model(ws.rm_dir(kind, 1), ws.config.model) for kind in ("helpfulness", "safety")]
    score_samples(samples, rms[0], rms[1], ws.config.gate, batch_size=32, max_length=96)
    return sum(s["gated_logit"] for s in samples) / len(samples)


def test_mean_gated_score_on_held_out_prompts_rises_from_v0_to_v2(demo_smoke):
    ws = Workspace(demo_smoke)
    prompts = [p for name in ("eval_helpful", "eval_unsafe", "eval_borderline")
               for p in load_prompts(demo_smoke / "data" / f"{name}.jsonl")]
    with torch.no_grad():
        v0, v2 = _mean_gated_logit(ws, 0, prompts), _mean_gated_logit(ws, 2, prompts)
    assert v2 > v0 + 0.25, (v0, v2)


def _progress_mark(root: Path) -> tuple:
    """Changes whenever the run writes anything under root (files appear, grow or are replaced)."""
    files = [p.stat() for p in root.rglob("*") if p.is_file()] if root.exists() else []
    return len(files), sum(f.st_size for f in files), max((f.st_mtime_ns for f in files), default=0)


def _run_until(cmd: list[str], env: dict, ready, watch: Path, idle: float = 300.0) -> bool:
    """Start `cmd`; SIGKILL it as soon as ready() is true. True when it was killed, False when it ended.

    No fixed wall-clock limit (a loaded machine is slow, not stuck): the run fails only when it writes
    nothing under `watch` for `idle` seconds."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mark, last_change, polls = _progress_mark(watch), time.time(), 0
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
            polls += 1
            if polls % 50 == 0:  # about once a second
                now_mark = _progress_mark(watch)
                if now_mark != mark:
                    mark, last_change = now_mark, time.time()
                elif time.time() - last_change > idle:
                    raise AssertionError(f"{' '.join(cmd)}: no progress under {watch} for {idle:.0f} s")
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_during_sampling_and_fine_tuning_then_resume(demo_smoke, tmp_path):
    import os
    import shutil
    import sys

    import yaml

    root = tmp_path / "ws"
    shutil.copytree(demo_smoke, root)
    cfg = yaml.safe_load((root / "saferounds.yaml").read_text())
    cfg["rounds"]["max_version"] = 4
    (root / "saferounds.yaml").write_text(yaml.safe_dump(cfg))
    before = tree_digest(root / "versions") | tree_digest(root / "reward_models")
    partial = root / "versions" / ".v4.partial"
    cmd = [sys.executable, "-m", "saferounds.pipeline.cli", "round", "run", "-w", str(root)]
    env = dict(os.environ, SAFEROUNDS_QUIET="1", SAFEROUNDS_THREADS="1")

    def sampling_started() -> bool:
        p = partial / "samples.jsonl"
        return p.exists() and p.stat().st_size > 0 and not (partial / "selected.jsonl").exists()

    watch = root / "versions"
    assert _run_until(cmd, env, sampling_started, watch), "the round ended before sampling could be interrupted"
    ws = Workspace(root)
    assert ws.partial_versions() == [4] and ws.manifest(4)["stages"]["rs"]["status"] == "running"
    assert _run_until(cmd, env, lambda: (partial / "selected.jsonl").exists(), watch), \
        "the round ended before fine-tuning could be interrupted"
    assert not _run_until(cmd, env, lambda: False, watch)  # the third run completes
    assert ws.finished_versions() == [0, 1, 2, 3, 4] and ws.partial_versions() == []
    samples = [json.loads(line) for line in (ws.version_dir(4) / "samples.jsonl").read_text().splitlines()]
    prompts = load_prompts(root / "data" / "prompts.jsonl")
    keys = [(s["prompt_id"], s["sample_index"]) for s in samples]
    assert len(keys) == len(set(keys)) == ws.config.rejection_sampling.k * len(prompts)
    after = tree_digest(root / "versions") | tree_digest(root / "reward_models")
    assert {k: v for k, v in after.items() if not k.startswith("v4/")} == before


@pytest.mark.slow
def test_two_demo_runs_with_the_same_seed_give_the_same_metrics(demo_smoke, tmp_path):
    from saferounds.pipeline.demo import run_demo

    run_demo(tmp_path / "again", "smoke")
    for n in (1, 2, 3):
        a, b = (read_json(root / "versions" / f"v{n}" / "eval" / "metrics.json") for root in (demo_smoke, tmp_path / "again"))
        for key in ("safety", "helpfulness", "compared", "max_of_k"):
            assert a.get(key) == b.get(key), (n, key)
