"""`saferounds demo`: the whole method, offline, on a CPU, in minutes.

tiny preset -> step 0 pretraining -> SFT (v0) -> helpfulness and safety RMs -> rejection-sampling
rounds v1 and v2 -> rejection sampling then PPO for v3 -> every version evaluated -> the report
with trends. The data is the project's own synthetic generator (data.synthetic); the sizes
below keep `smoke` under 3 minutes and `default` under 10 on 2 CPU cores (bench/demo_time.py).

A demo workspace is an ordinary workspace: `saferounds status -w DIR` and every other command
work on it, and re-running the demo resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from saferounds.core.distributed import run_on_main
from saferounds.core.errors import InputError
from saferounds.core.io import read_json
from saferounds.pipeline.presets import init_workspace
from saferounds.pipeline.rounds import run_round
from saferounds.pipeline.v0 import run_pretrain, run_sft
from saferounds.pipeline.workspace import Workspace

SIZES: dict[str, dict] = {
    "smoke": {
        "pretrain": {"epochs": 1},
        "sft": {"epochs": 20},
        "reward_models": {"epochs": 1},
        "ppo": {"steps": 4},
    },
    "default": {},
}


def _stage_done(manifest: dict, stage: str) -> bool:
    return manifest.get("stages", {}).get(stage, {}).get("status") in ("done", "skipped")


def run_demo(directory: str | Path, size: str = "default",
             progress: Callable[[str], None] | None = None) -> dict:
    """Build or resume the demo workspace and run every stage; return the headline figures."""
    if size not in SIZES:
        raise InputError(f"--size: expected one of {', '.join(SIZES)}, got {size!r}")
    say = progress or (lambda message: None)
    if "SAFEROUNDS_THREADS" not in os.environ:
        # The tiny models are far too small to gain from intra-op threads, and oversubscribed
        # threads on a busy 2-core machine slow every op by 10x or more.
        torch.set_num_threads(1)
    directory = Path(directory)
    started = time.time()
    ws = Workspace(directory)
    if not ws.exists():
        say(f"writing the tiny preset and synthetic data ({size}) to {directory}")
        run_on_main(init_workspace, directory, "tiny", data_size=size, overrides=SIZES[size])
        ws = Workspace(directory)
    with ws.lock():
        if 0 not in ws.finished_versions():
            partial = ws.manifest(0) if ws.partial_dir(0).exists() else {}
            if not _stage_done(partial, "pretrain"):
                say("v0: step 0 domain pretraining")
                run_pretrain(ws)
            say("v0: supervised fine-tuning")
            run_sft(ws)
        while ws.partial_versions() or (ws.latest() or 0) < ws.config.rounds.max_version:
            run_round(ws, progress=say)
    return summary(ws, seconds=time.time() - started)


def summary(ws: Workspace, seconds: float | None = None) -> dict:
    """Headline figures of the newest version's evaluation (which covers v0 and the previous one)."""
    latest = ws.latest()
    metrics_path = ws.version_dir(latest) / "eval" / "metrics.json"
    out = {"workspace": str(ws.root), "latest": f"v{latest}", "seconds": None if seconds is None else round(seconds, 1),
           "report": str(metrics_path.with_name("report.html"))}
    if metrics_path.exists():
        from saferounds.eval.versions import load_trend

        m = read_json(metrics_path)
        out["trend"] = load_trend(ws.root)
        out["compared"] = m.get("compared", {})
        out["final"] = {k: m[k] for k in ("safety", "helpfulness")}
        out["safety"] = {k: m["safety"].get(k) for k in ("violation_rate", "false_refusal_rate")}
        out["helpfulness"] = {k: m["helpfulness"].get(k) for k in ("mean_score", "reference_overlap", "win_rate")}
        out["versions"] = version_rows(m, out["trend"], latest)
    return out


def version_rows(latest_metrics: dict, trend: list[dict], latest: int) -> list[dict]:
    """The summary table (issue 28): one row per version v0..vN with its violation and false-refusal rates and
    their 95% intervals, the helpfulness RM mean and the gold win rate vs v0. Each version as the newest eval
    that judged it: the latest eval (itself and the versions it compared, by one set of judges), else the newest
    eval that compared it, else its own; `judged_in` names which."""
    from saferounds.core.versions import version_number

    evals = sorted([latest_metrics, *trend], key=lambda t: -version_number(t["version"]))
    rows = []
    for n in range(latest + 1):
        v = f"v{n}"
        found = next(((m, m) for m in evals if m["version"] == v and m is latest_metrics), None) or \
            next(((m, m["compared"][v]) for m in evals if v in (m.get("compared") or {})), None) or \
            next(((m, m) for m in evals if m["version"] == v), None)
        if found is None:
            continue
        src, block = found
        safety, helpful = block.get("safety") or {}, block.get("helpfulness") or {}
        fr = safety.get("false_refusal") or {}
        gold = ((src.get("gold") or {}).get("versions") or {}).get(v) or {}
        rows.append({"version": v, "judged_in": f"{src['version']} eval", "violation": safety.get("violation"),
                     "false_refusal_borderline": fr.get("borderline"), "false_refusal_helpful": fr.get("helpful"),
                     "helpfulness_mean": helpful.get("mean_score"),
                     "gold_win_rate_vs_v0": gold.get("gold_win_rate_vs_v0")})
    return rows
