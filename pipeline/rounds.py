"""The round manager: creates version N from the plan in the config and runs its stages in order
(rm -> label -> distill -> rs -> ppo -> eval as planned), recording each in the manifest.

Re-running continues an interrupted version: finished stages are skipped and the stage that was
running resumes from its own checkpoints. The last policy-producing stage's output (pipeline.stage_policies
says which stages make one) becomes the version's `policy/` before evaluation; the whole directory is
renamed from `.vN.partial` to `vN` only when every stage is done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from saferounds.core import distributed as dist
from saferounds.core.errors import InputError
from saferounds.core.logs import log_to
from saferounds.core.progress import scope
from saferounds.pipeline.config import STAGE_ORDER
from saferounds.pipeline.stage_policies import POLICY_DIRS
from saferounds.pipeline.workspace import Workspace


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
    last = [s for s in stages if s in POLICY_DIRS][-1]
    made = d / POLICY_DIRS[stage]
    if stage == last and made.exists() and not (d / "policy").exists():
        os.replace(made, d / "policy")


def stage_parent(ws: Workspace, d: Path, n: int, stage: str) -> Path:
    """The policy a stage of vN starts from: the newest one an earlier stage of vN made (policy/ once placed,
    else the output of the latest earlier policy stage: distill_policy/ for rs, rs_policy/ for ppo), else
    v(N-1)'s policy. A distill that kept no answer writes none, and rs starts from v(N-1)'s policy."""
    earlier = STAGE_ORDER[:STAGE_ORDER.index(stage)]
    made = [Path(d) / "policy"] + [Path(d) / POLICY_DIRS[s] for s in reversed(earlier) if s in POLICY_DIRS]
    return next((p for p in made if p.exists()), None) or ws.policy_path(n - 1)


def validate_stages(ws: Workspace, n: int, stages: list[str]) -> None:
    """Every planned stage's input checks (Stage.validate), so bad or missing input, or a reward model the
    plan lacks, fails (exit 2) before the version is started rather than hours into it."""
    from saferounds.pipeline.stages import STAGES  # the stages load torch; `status` and `show` need none of it

    if n > 0 and ws.version_dir(n - 1).is_dir():
        ws.manifest(n - 1)  # a damaged parent manifest is an InputError naming it, never built on
    for stage in stages:
        STAGES[stage].validate(ws, n, stages)


def run_round(ws: Workspace, progress: Callable[[str], None] | None = None,
              until: str | None = None) -> dict:
    """Run (or resume) the next version; `until` stops after that stage (the version stays partial)."""
    from saferounds.pipeline.stages import STAGES, StageContext  # the stages load torch (see validate_stages)

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
    dist.all_ranks(validate_stages, ws, n, stages)  # bad input fails every rank before anything is written
    inputs = list(dict.fromkeys(f for s in STAGES.values() for f in s.input_files(cfg)))
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
        ctx = StageContext(workspace=ws, config=cfg, version=n, dir=d, parent_policy=stage_parent(ws, d, n, stage),
                           rm_paths=ws.rm_paths(at_most=n), prior_versions=prior, progress=report)
        report(f"v{n}: {stage}")
        with ws.stage(n, stage) as done:
            with log_to(d / "logs" / "stage.log"), scope(f"v{n}"):  # the details; progress: core.progress
                done.metrics = dist.all_ranks(STAGES[stage].run, ctx) or {}  # every rank; one fails: all fail
            if STAGES[stage].policy:
                dist.run_on_main(_place_policy, d, stage, stages)
            done.manifest["reward_models"] = {k: p.name for k, p in ws.rm_paths(at_most=n).items()}
        if until == stage:
            return {"version": n, "status": "partial", "stopped_after": stage}
    ws.finish_version(n)
    return {"version": n, "status": "complete", "manifest": ws.manifest(n)}


def live_status(ws: Workspace, status: str | None, holder: str | None) -> str | None:
    """A manifest that says `running` while no process holds the workspace lock belongs to a run that
    died (kill -9, power loss): show `died`, never `running`."""
    if status == "running" and holder is None:
        return "died"
    return status


def list_versions(ws: Workspace) -> list[dict]:
    rows = []
    holder = ws.lock().holder()
    for n in sorted(set(ws.finished_versions()) | set(ws.partial_versions())):
        m = ws.manifest(n)
        order = m.get("plan") or list(m.get("stages", {}))
        rows.append({"version": m["version"], "parent": m.get("parent"),
                     "status": live_status(ws, m.get("status"), holder),
                     "stages": [{"stage": s, "status": live_status(ws, m["stages"].get(s, {}).get("status"), holder)}
                                for s in order],
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
