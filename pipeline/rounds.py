"""The round manager: creates version N from the plan in the config and runs its stages in order
(rm -> label -> distill -> rs -> ppo -> eval as planned), recording each in the manifest.

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

from saferounds.core import distributed as dist
from saferounds.core.errors import InputError
from saferounds.core.logs import log_to
from saferounds.core.progress import scope
from saferounds.pipeline.config import Config
from saferounds.pipeline.workspace import Workspace, now

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


def stage_parent(ws: Workspace, d: Path, n: int, stage: str) -> Path:
    """The policy a stage of vN starts from: the version's distill_policy/ for the stages after `distill`
    (context distillation first, then rs and ppo build on the distilled model), else v(N-1)'s policy."""
    distilled = Path(d) / "distill_policy"
    return distilled if stage != "distill" and distilled.exists() else ws.policy_path(n - 1)


def validate_inputs(ws: Workspace, stages: list[str]) -> None:
    """Read every data file the planned stages need, so bad or missing input fails (exit 2) before
    the version is started rather than hours into it."""
    from saferounds.pipeline.data import load_prompts

    cfg = ws.config
    if {"label", "rs", "ppo"} & set(stages):
        if not cfg.data.prompts:
            raise InputError(f"{ws.config_path}: data.prompts: no files listed; the planned stages {stages} need prompts")
        for f in cfg.data.prompts:
            load_prompts(ws.resolve(f))
    if "distill" in stages:
        from saferounds.pipeline.stages.distill import adversarial_prompts

        adversarial_prompts(cfg, ws.resolve)
    if "rm" in stages:
        from saferounds.pipeline.stages.rm import load_rm_records

        load_rm_records(ws)
    validate_outputs_and_suites(ws, stages)


def validate_plan(ws: Workspace, n: int, stages: list[str]) -> None:
    """What vN's stages need from earlier versions is there before .vN.partial is created: rs and ppo
    need both reward models, from an `rm` stage of vN or an earlier version. With overlapping
    rounds.plan entries (the last match wins) the message names the entries that cover vN."""
    from saferounds.pipeline.config import version_in_spec

    if "rm" in stages or not {"rs", "ppo"} & set(stages):
        return
    from saferounds.sampling.config import reward_for_round

    if reward_for_round(ws.config.rejection_sampling, n) == "judge" and "ppo" not in stages:
        return
    missing = [k for k in ("helpfulness", "safety") if k not in ws.rm_paths(at_most=n)]
    if not missing:
        return
    covering = [f"{{versions: {e.versions!r}, stages: {list(e.stages)}}}" for e in ws.config.rounds.plan
                if version_in_spec(n, e.versions)]
    overlap = f"; entries {' and '.join(covering)} all cover v{n} and the last one wins" if len(covering) > 1 else ""
    raise InputError(f"rounds.plan: v{n} runs {stages} but there is no {' or '.join(missing)} reward model yet; "
                     f"plan an `rm` stage for v{n}{overlap}")


def validate_outputs_and_suites(ws: Workspace, stages: list[str]) -> None:
    """Checks that used to fail hours in (after the RMs, sampling and the fine-tune), when fixing them
    blocks the resume ("saferounds.yaml changed"): every eval.suites entry loads (kind known, file there),
    and no configured output path lies inside a finished version."""
    from saferounds.core.versions import ensure_outside_finished_versions

    cfg = ws.config
    if "label" in stages and cfg.judge.cache_path:
        ensure_outside_finished_versions(ws.resolve(cfg.judge.cache_path), "judge.cache_path")
    if "eval" in stages:
        from saferounds.eval.suites import load_suites
        from saferounds.pipeline.stages.eval import suite_specs

        load_suites(suite_specs(cfg, ws.root), base=ws.root, prompt_column=cfg.eval.prompt_column,
                    limit=cfg.eval.max_prompts_per_suite)


def run_round(ws: Workspace, progress: Callable[[str], None] | None = None,
              until: str | None = None) -> dict:
    """Run (or resume) the next version; `until` stops after that stage (the version stays partial)."""
    from saferounds.pipeline.stages import STAGES  # the stages load torch; `status` and `show` need none of it

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
    dist.all_ranks(validate_plan, ws, n, stages)
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
        ctx = StageContext(workspace=ws, config=cfg, version=n, dir=d, parent_policy=stage_parent(ws, d, n, stage),
                           rm_paths=ws.rm_paths(at_most=n), prior_versions=prior, progress=report)
        report(f"v{n}: {stage}")
        started = time.time()
        ws.set_stage(n, stage, status="running", started=now(), error=None)
        try:
            with log_to(d / "logs" / "stage.log"), scope(f"v{n}"):  # the details; progress: core.progress
                metrics = dist.all_ranks(STAGES[stage], ctx) or {}  # every rank; a failure on one fails all
        except BaseException as e:
            record_failure(ws, n, stage, e)
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


def record_failure(ws: Workspace, n: int, stage: str, e: BaseException) -> None:
    """The stage's failure in the manifest (status interrupted for Ctrl-C, else failed). Best effort: on a
    full disk even the manifest may not fit, and the cause must still reach the user."""
    import contextlib

    interrupted = isinstance(e, KeyboardInterrupt)
    reason = "interrupted" if interrupted else f"{type(e).__name__}: {e}"
    with contextlib.suppress(OSError):
        ws.set_stage(n, stage, status="interrupted" if interrupted else "failed", error=reason[:2000],
                     traceback=traceback.format_exc()[-4000:], pid=os.getpid())
        ws.update_manifest(n, status="interrupted" if interrupted else "failed")


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
