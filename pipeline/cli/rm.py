"""`saferounds rm train|eval`: reward models of the workspace (reward_models/{kind}/vN)."""
from __future__ import annotations

import logging
import shutil
from typing import Annotated, Optional

import typer

from saferounds.core.distributed import run_on_main
from saferounds.core.errors import InputError
from saferounds.pipeline.cli.common import JsonOpt, WorkspaceOpt, console, fmt, locked, open_workspace, print_json, table
from saferounds.pipeline.cli.live import VerboseOpt, live

rm_app = typer.Typer(no_args_is_help=True, help="Train and evaluate the helpfulness and safety reward models.")

KindOpt = Annotated[str, typer.Option("--kind", help="helpfulness | safety")]
VersionOpt = Annotated[Optional[str], typer.Option("--version", help="RM version (vN); default: see command.")]
DataOpt = Annotated[Optional[list[str]], typer.Option("--data", help="Preference file(s) to use instead of "
                                                                     "the configured data (repeatable).")]


def register(app: typer.Typer) -> None:
    app.add_typer(rm_app, name="rm")


def _kind(kind: str) -> str:
    if kind not in ("helpfulness", "safety"):
        raise InputError(f"--kind: expected helpfulness or safety, got {kind!r}")
    return kind


@rm_app.command("train")
def train(kind: KindOpt, objective: Annotated[Optional[str], typer.Option(
              help="pairwise | regression (default: reward_models.objective)")] = None,
          version: VersionOpt = None, data: DataOpt = None,
          max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (smoke runs).")] = None,
          workspace: WorkspaceOpt = None, json: JsonOpt = False, verbose: VerboseOpt = False):
    """Train a reward model into reward_models/{kind}/vN (default N: the next round's version)."""
    from saferounds.core.versions import parse_version
    from saferounds.pipeline.stages.rm import load_rm_records, train_kind

    kind = _kind(kind)
    if objective not in (None, "pairwise", "regression"):
        raise InputError(f"--objective: expected pairwise or regression, got {objective!r}")
    ws = open_workspace(workspace)
    n = parse_version(version) if version else (ws.latest() or 0) + 1
    if ws.rm_dir(kind, n).exists():
        raise InputError(f"{ws.rm_dir(kind, n)}: already trained; pass --version for another, or remove it")
    records = load_rm_records(ws, files=data)  # validates before anything is written
    work = ws.rm_partial_dir(kind, n).with_name(f".v{n}.work")  # checkpoints: a rerun resumes from them
    with locked(ws), live(ws.root / "logs" / "saferounds.log", verbose):
        metrics = train_kind(ws, kind, n, records, work, logging.getLogger("saferounds.rm"), objective, max_steps)
    run_on_main(shutil.rmtree, work, ignore_errors=True)
    if json:
        print_json({"kind": kind, "version": f"v{n}", "path": str(ws.rm_dir(kind, n)), **metrics})
        return
    console.print(f"{kind} RM v{n} -> {ws.rm_dir(kind, n)}: {metrics['steps']} steps, "
                  f"train loss {fmt(metrics['train_loss'])}, mix {metrics['mix']}")
    if metrics.get("heldout"):
        _print_eval(f"{kind} RM v{n}, held-out pairs", metrics["heldout"])


@rm_app.command("eval")
def evaluate(kind: KindOpt, version: VersionOpt = None, data: DataOpt = None,
             workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Accuracy overall, per rating (LLaMA 2 Table 8), per safety label, unsafe recall at sigma = 0.5.

    Default data: the held-out split (by prompt) of the configured pairs of this kind. The result is stored
    under "eval" in the RM's manifest.json."""
    import dataclasses
    import json as jsonlib

    from saferounds.core.io import write_json
    from saferounds.core.versions import parse_version
    from saferounds.pipeline.stages.rm import load_rm_records
    from saferounds.reward_models.evaluation import evaluate_pairs
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.training import MANIFEST, prepare_pairs, training_set

    kind = _kind(kind)
    ws = open_workspace(workspace)
    n = parse_version(version) if version else ws.latest_rm(kind)
    if n is None or not ws.rm_dir(kind, n).exists():
        have = ", ".join(f"v{v}" for v in ws.rm_versions(kind)) or "none"
        raise InputError(f"{kind} RM {'v' + str(n) if n else ''}: not found (trained: {have}); "
                         f"run `saferounds rm train --kind {kind}` first")
    cfg = ws.config.reward_models
    records = load_rm_records(ws, files=data)
    if data:
        pairs, _ = prepare_pairs(records)
        source = ", ".join(data)
    else:
        _, pairs, _ = training_set(kind, records, dataclasses.replace(cfg, objective="pairwise"), ws.config.seed)
        source = f"held-out {cfg.eval_fraction:.0%} of the configured {kind} data"
    if not pairs:
        raise InputError(f"rm eval: no {kind} pairs to evaluate on ({source}); pass --data FILE")
    model, tok = load_reward_model(ws.rm_dir(kind, n), ws.config.model)
    metrics = {"data": source, **evaluate_pairs(model, tok, pairs, cfg.score_batch_size, cfg.max_length)}
    path = ws.rm_dir(kind, n) / MANIFEST
    def record() -> None:  # rank 0 writes under a launch
        manifest = jsonlib.loads(path.read_text()) if path.exists() else {}
        manifest["eval"] = metrics
        write_json(path, manifest)

    with locked(ws):
        run_on_main(record)
    if json:
        print_json({"kind": kind, "version": f"v{n}", **metrics})
    else:
        _print_eval(f"{kind} RM v{n} on {source}", metrics)


def _pct(block: dict | None) -> str:
    return "" if not block or block.get("accuracy") is None else f"{100 * block['accuracy']:.1f} (n={block['n']})"


def _print_eval(title: str, m: dict) -> None:
    from saferounds.reward_models.evaluation import TABLE_8

    names = dict(zip(TABLE_8, ["Significantly Better", "Better", "Slightly Better", "Negligibly Better / Unsure",
                               "Unrated"]))
    by = m.get("by_rating", {})
    cols = [k for k in TABLE_8 if k != "unrated" or k in by]
    console.print(table(f"{title}: accuracy % by rating (LLaMA 2 Table 8 layout)", [names[k] for k in cols] + ["Avg"],
                        [[_pct(by.get(k)) for k in cols] + [_pct(m)]]))
    labels = m.get("by_safety_label", {})
    console.print(table("accuracy % by safety label", list(labels), [[_pct(v) for v in labels.values()]]))
    recall = m.get("unsafe_recall")
    console.print(f"unsafe recall at sigma=0.5: {'n/a' if recall is None else f'{100 * recall:.1f}%'} "
                  f"of {m.get('unsafe_responses', 0)} unsafe responses; precision "
                  f"{fmt(m.get('unsafe_precision'))}")
