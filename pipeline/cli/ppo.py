"""`saferounds ppo`: PPO on one policy outside the round plan (experiments, tuning beta and lr).

Uses the workspace's config (plus --set overrides), prompts and newest reward models, and writes
into --out (never into a finished version): ppo_policy/, ppo_log.jsonl, work/ppo/ (rerun to resume).
Inside rounds the same code runs as the `ppo` stage (pipeline.stages.ppo).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import InputError
from saferounds.pipeline.cli.common import JsonOpt, WorkspaceOpt, console, fmt, locked, open_workspace, output_dir, print_json
from saferounds.pipeline.cli.live import VerboseOpt, live, log_message


def ppo(out: Annotated[Path, typer.Option("--out", help="Directory to write ppo_policy/ and the log into.")],
        policy: Annotated[Optional[str], typer.Option(
            help="Start policy: a version (vN) or a model directory; default: the newest version.")] = None,
        steps: Annotated[Optional[int], typer.Option(help="Override ppo.steps.")] = None,
        set_: Annotated[Optional[list[str]], typer.Option(
            "--set", help="Config override KEY.PATH=VALUE, e.g. ppo.beta=0.005 (repeatable).")] = None,
        workspace: WorkspaceOpt = None, json: JsonOpt = False, verbose: VerboseOpt = False):
    """Run PPO on the gated reward from a policy, with the workspace's newest reward models."""
    ws = open_workspace(workspace)
    with locked(ws):  # a version in use by PPO cannot be discarded under it
        _ppo(ws, out, policy, steps, set_, json, verbose)


def _check_policy(start: Path, cfg) -> None:
    """A start policy that would be refused (e.g. pickle weights) fails before --out is created."""
    from saferounds.pipeline.models import check_loadable

    check_loadable(start, "--policy")


def _ppo(ws, out: Path, policy: str | None, steps: int | None, set_: list[str] | None, json: bool,
         verbose: bool) -> None:
    from saferounds.core.versions import parse_version
    from saferounds.pipeline.config import CONFIG_NAME, load_config
    from saferounds.core.tracking import tracking
    from saferounds.pipeline.stages import StageContext
    from saferounds.pipeline.stages.ppo import run
    from saferounds.pipeline.training.ppo import STOP_REASONS

    overrides = list(set_ or []) + ([f"ppo.steps={steps}"] if steps is not None else [])
    cfg = load_config(ws.root / CONFIG_NAME, overrides)
    latest = ws.latest()
    if policy is None:
        if latest is None:
            raise InputError("--policy: the workspace has no finished version; pass a model directory")
        start = ws.policy_path(latest)
    elif policy.lstrip("v").isdigit() and not Path(policy).exists():
        start = ws.policy_path(parse_version(policy))
    else:
        start = Path(policy)
        if not start.exists():
            raise InputError(f"--policy: {policy} is neither a version (vN) nor an existing directory")
    rm_paths = ws.rm_paths()
    for kind in ("helpfulness", "safety"):
        if kind not in rm_paths:
            raise InputError(f"reward_models/{kind}: no trained {kind} reward model; run `saferounds rm train "
                             f"--kind {kind}` first")
    out = output_dir(ws, out)
    _check_policy(start, cfg)
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(workspace=ws, config=cfg, version=(latest or 0) + 1, dir=out, parent_policy=start,
                       rm_paths=rm_paths, prior_versions=[], log=logging.getLogger("saferounds.ppo"),
                       progress=log_message)
    with live(out / "logs" / "stage.log", verbose), tracking(cfg.tracking.report_to, ws.root):
        metrics = run(ctx)
    if json:
        print_json({"out": str(out), "policy": str(out / "ppo_policy"), **metrics})
        return
    console.print(f"PPO {metrics['ppo_steps']} steps from {start} -> {out / 'ppo_policy'}"
                  + (f" ({STOP_REASONS[metrics.get('ppo_stop_reason', 'kl')]})" if metrics["ppo_stopped_early"] else ""))
    console.print(f"last step: score {fmt(metrics.get('ppo_score'))}, KL {fmt(metrics.get('ppo_kl'))}, "
                  f"response length {fmt(metrics.get('ppo_response_length'), 1)}; log {out / 'ppo_log.jsonl'}")


def register(app: typer.Typer) -> None:
    app.command("ppo")(ppo)
