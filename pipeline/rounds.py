"""The round manager: creates version N from the plan in the config and runs its stages in order
(rm -> label -> rs -> ppo -> eval as planned), recording each in the manifest.

Re-running continues an interrupted version: finished stages are skipped and the stage that was
running resumes from its own checkpoints. The last policy-producing stage's output (rs_policy or
ppo_policy) becomes the version's `policy/` before evaluation; the whole directory is renamed
from `.vN.partial` to `vN` only when every stage is done.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import distributed as dist
from core.errors import InputError
from pipeline.config import Config
from pipeline.workspace import Workspace, now

POLICY_OUTPUTS = {"rs": "rs_policy", "ppo": "ppo_policy"}
log = logging.getLogger("saferounds")


@dataclass
class StageContext:
    workspace: Workspace
    config: Config
    version: int
    dir: Path
    parent_policy: Path
    rm_paths: dict[str, Path]
    prior_versions: list[Path]
    progress: Callable[[str], None] = lambda message: None
    log: logging.Logger = field(default_factory=lambda: log)

    @property
    def policy(self) -> Path:
        """The version's policy once its last policy stage is done (what eval evaluates)."""
        return self.dir / "policy"


def next_version(ws: Workspace) -> tuple[int, bool]:
    """(N, resuming): an unfinished version is resumed before a new one is started."""
    partial = ws.partial_versions()
    partial = [n for n in partial if n > 0]
    if partial:
        return partial[0], True
    latest = ws.latest()
    if latest is None:
        raise InputError("no v0 yet: run `saferounds sft` (and optionally `saferounds pretrain`) first")
    n = latest + 1
    if n > ws.config.rounds.max_version:
        raise InputError(f"rounds.max_version: the plan ends at v{ws.config.rounds.max_version}; "
                         "raise it in saferounds.yaml to run more rounds")
    return n, False


def _place_policy(d: Path, stage: str, stages: list[str]) -> None:
    """After the last policy stage of the plan, its output becomes the version's policy/."""
    last = [s for s in stages if s in POLICY_OUTPUTS][-1]
    if stage == last and (d / POLICY_OUTPUTS[stage]).exists() and not (d / "policy").exists():
        os.replace(d / POLICY_OUTPUTS[stage], d / "policy")


def validate_inputs(ws: Workspace, stages: list[str]) -> None:
    """Read every data file the planned stages need, so bad or missing input fails (exit 2) before
    the version is started rather than hours into it."""
    from pipeline.data import load_prompts

    cfg = ws.config
    if {"label", "rs", "ppo"} & set(stages):
        if not cfg.data.prompts:
            raise InputError(f"{ws.config_path}: data.prompts: no files listed; the planned stages {stages} need prompts")
        for f in cfg.data.prompts:
            load_prompts(ws.resolve(f))
    if "rm" in stages:
        from pipeline.stages.rm import load_rm_records

        load_rm_records(ws)


def run_round(ws: Workspace, progress: Callable[[str], None] | None = None,
              until: str | None = None) -> dict:
    """Run (or resume) the next version; `until` stops after that stage (the version stays partial)."""
    from pipeline.stages import STAGES  # the stages load torch; `status` and `show` need none of it

    cfg = ws.config
    n, resuming = next_version(ws)
    if resuming:
        manifest = ws.manifest(n)
        if manifest["config_hash"] != cfg.hash():
            raise InputError(f"v{n}: saferounds.yaml changed since this version started; restore it, or "
                             f"`saferounds round discard v{n}` and run the round again")
        stages = list(manifest["plan"])  # (manifest keys are sorted on disk: the plan keeps the order)
    else:
        stages = cfg.stages_for(n)  # validated with the config (pipeline.config.check_stages)
    if until is not None and until not in stages:
        raise InputError(f"--until {until}: v{n} runs {', '.join(stages)}; name one of those")
    dist.all_ranks(validate_inputs, ws, stages)  # bad input fails every rank before anything is written
    data = cfg.data
    inputs = data.prompts + data.helpfulness_preferences + data.safety_preferences + data.rankings \
        + cfg.rejection_sampling.demonstrations
    d = ws.begin_version(n, n - 1, stages, inputs)
    if resuming:  # record the inputs as they are now; say which changed since the version started
        now_hashes = ws.hash_inputs(inputs)
        changed = sorted(k for k in set(now_hashes) | set(manifest["inputs"])
                         if now_hashes.get(k) != manifest["inputs"].get(k))
        if changed:
            ws.update_manifest(n, inputs=now_hashes, inputs_changed_on_resume=changed)
    ws.update_manifest(n, status="running")
    prior = [ws.version_dir(v) for v in ws.finished_versions() if 0 < v < n]
    report = progress if progress and dist.is_main() else (lambda message: None)  # one voice: rank 0
    for stage in stages:
        state = ws.manifest(n)["stages"].get(stage, {})
        if state.get("status") == "done":
            continue
        ctx = StageContext(workspace=ws, config=cfg, version=n, dir=d, parent_policy=ws.policy_path(n - 1),
                           rm_paths=ws.rm_paths(at_most=n), prior_versions=prior, progress=report)
        report(f"v{n}: {stage}")
        started = time.time()
        ws.set_stage(n, stage, status="running", started=now(), error=None)
        try:
            metrics = dist.all_ranks(STAGES[stage], ctx) or {}  # every rank; a failure on one fails all
        except BaseException as e:
            reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            ws.set_stage(n, stage, status="failed", error=reason[:2000],
                         traceback=traceback.format_exc()[-4000:])
            ws.update_manifest(n, status="failed")
            raise
        seconds = round(time.time() - started, 2)
        if stage in POLICY_OUTPUTS:
            dist.run_on_main(_place_policy, d, stage, stages)
        ws.set_stage(n, stage, status="done", finished=now(), seconds=seconds, metrics=metrics)
        ws.update_manifest(n, metrics={stage: metrics}, timings={stage: seconds},
                           reward_models={k: p.name for k, p in ws.rm_paths(at_most=n).items()})
        if until == stage:
            return {"version": n, "status": "partial", "stopped_after": stage}
    ws.finish_version(n)
    return {"version": n, "status": "complete", "manifest": ws.manifest(n)}


def list_versions(ws: Workspace) -> list[dict]:
    rows = []
    for n in sorted(set(ws.finished_versions()) | set(ws.partial_versions())):
        m = ws.manifest(n)
        order = m.get("plan") or list(m.get("stages", {}))
        rows.append({"version": m["version"], "parent": m.get("parent"), "status": m.get("status"),
                     "stages": [{"stage": s, "status": m["stages"].get(s, {}).get("status")} for s in order],
                     "created": m.get("created"), "finished": m.get("finished"),
                     "seconds": round(sum(m.get("timings", {}).values()), 1),
                     "headline": headline(m)})
    return rows


def headline(manifest: dict) -> dict:
    """The few numbers a status table shows: from the eval stage when it ran."""
    ev = manifest.get("metrics", {}).get("eval", {}) or {}
    safety, helpful = ev.get("safety", {}) or {}, ev.get("helpfulness", {}) or {}
    return {"violation_rate": safety.get("violation_rate"),
            "false_refusal_rate": safety.get("false_refusal_rate"),
            "helpfulness": helpful.get("mean_score")}


def flatten(obj, prefix="") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def diff_versions(ws: Workspace, a: int, b: int) -> dict:
    """Config and metric differences between two versions (keys whose values differ)."""
    ma, mb = ws.manifest(a), ws.manifest(b)
    out = {}
    for section in ("config", "reward_models", "inputs", "metrics"):
        fa, fb = flatten(ma.get(section, {})), flatten(mb.get(section, {}))
        keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and not _noise(k))
        out[section] = {k: [fa.get(k), fb.get(k)] for k in keys}
    return out


def _noise(key: str) -> bool:
    """Keys that differ between any two versions and say nothing: timestamps, paths, copies."""
    parts = key.split(".")
    return bool({"created", "judges", "compared", "resumed_from", "timings", "backbone",
                 "ppo_start", "ppo_reference", "ci95"} & set(parts))
