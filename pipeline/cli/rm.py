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
    from saferounds.core.tracking import tracking
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
    with locked(ws), live(ws.root / "logs" / "saferounds.log", verbose), \
            tracking(ws.config.tracking.report_to, ws.root):
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
    """Held-out accuracy with 95% intervals: overall, per origin, per rating (LLaMA 2 Table 8), per safety
    label; unsafe recall at sigma = 0.5.

    Default data: reward_models.heldout_{kind} (pairs never trained on; the block in the RM's manifest is
    reused when it scored these pairs with this RM), else the held-out split (by prompt) of the configured
    pairs of this kind. --data FILE: stored under "eval" in the RM's manifest.json."""
    from saferounds.core.versions import parse_version
    from saferounds.pipeline.stages.rm import heldout_block

    kind = _kind(kind)
    ws = open_workspace(workspace)
    n = parse_version(version) if version else ws.latest_rm(kind)
    if n is None or not ws.rm_dir(kind, n).exists():
        have = ", ".join(f"v{v}" for v in ws.rm_versions(kind)) or "none"
        raise InputError(f"{kind} RM {'v' + str(n) if n else ''}: not found (trained: {have}); "
                         f"run `saferounds rm train --kind {kind}` first")
    files = getattr(ws.config.reward_models, f"heldout_{kind}")
    if not data and files:
        with locked(ws):
            metrics = {"data": f"held-out pairs of {', '.join(files)}", **heldout_block(ws, kind, n)}
    else:
        metrics = _eval_other(ws, kind, n, data)
    if json:
        print_json({"kind": kind, "version": f"v{n}", **metrics})
    else:
        _print_eval(f"{kind} RM v{n} on {metrics['data']}", metrics)


def _eval_other(ws, kind: str, n: int, data: list[str] | None) -> dict:
    """Accuracy on --data files, or on the eval_fraction split of the configured pairs; stored under "eval"
    in the RM's manifest (reused when it scored the same pairs with this RM)."""
    import dataclasses

    from saferounds.core.io import read_json, write_json
    from saferounds.pipeline.stages.rm import load_rm_records
    from saferounds.reward_models.evaluation import heldout_accuracy
    from saferounds.reward_models.training import MANIFEST, prepare_pairs, training_set

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
    path = ws.rm_dir(kind, n) / MANIFEST
    manifest = read_json(path) if path.exists() else {}
    metrics = {"data": source, **heldout_accuracy(ws.rm_dir(kind, n), pairs, cfg, manifest.get("eval"),
                                                  model_cfg=ws.config.model)}

    def record() -> None:  # rank 0 writes under a launch
        write_json(path, {**(read_json(path) if path.exists() else {}), "eval": metrics})

    if not metrics["cached"]:
        with locked(ws):
            run_on_main(record)
    return metrics


def _pct(block: dict | None) -> str:
    return "" if not block or block.get("accuracy") is None else f"{100 * block['accuracy']:.1f} (n={block['n']})"


def accuracy_ci(block: dict | None) -> str:
    """`0.612 [0.56, 0.66] n=400`: an accuracy with its Wilson 95% interval."""
    if not block or block.get("accuracy") is None:
        return "-"
    lo, hi = block["ci95"]
    return f"{block['accuracy']:.3f} [{lo:.2f}, {hi:.2f}] n={block['n']}"


def _print_eval(title: str, m: dict) -> None:
    from saferounds.reward_models.evaluation import NO_RATINGS, TABLE_8, has_rating_levels, ranks_better_than_chance

    origins = m.get("by_origin") or {}
    console.print(table(f"{title}: accuracy [95% interval]", ["all", *origins],
                        [[accuracy_ci(m), *(accuracy_ci(b) for b in origins.values())]]))
    if m.get("cached"):
        console.print(f"(scored earlier for this RM, sha256 {m.get('rm_sha256', '')[:12]}; reused)")
    if not ranks_better_than_chance(m):
        console.print("not better than chance: the 95% interval includes 0.5")
    names = dict(zip(TABLE_8, ["Significantly Better", "Better", "Slightly Better", "Negligibly Better / Unsure",
                               "Unrated"]))
    by = m.get("by_rating", {})
    if has_rating_levels(m):
        cols = [k for k in TABLE_8 if k != "unrated" or k in by]
        console.print(table("accuracy % by rating (LLaMA 2 Table 8 layout)", [names[k] for k in cols] + ["Avg"],
                            [[_pct(by.get(k)) for k in cols] + [_pct(m)]]))
    else:
        console.print(NO_RATINGS)
    labels = m.get("by_safety_label", {})
    console.print(table("accuracy % by safety label", list(labels), [[_pct(v) for v in labels.values()]]))
    recall = m.get("unsafe_recall")
    console.print(f"unsafe recall at sigma=0.5: {'n/a' if recall is None else f'{100 * recall:.1f}%'} "
                  f"of {m.get('unsafe_responses', 0)} unsafe responses; precision "
                  f"{fmt(m.get('unsafe_precision'))}")


def status_lines(ws) -> list[str]:
    """One line per RM kind, its latest version's held-out accuracy with the interval, overall and by origin
    (what `saferounds status` prints under its table)."""
    from saferounds.core.io import read_json
    from saferounds.reward_models.training import MANIFEST

    lines = []
    for kind in ("helpfulness", "safety"):
        n = ws.latest_rm(kind)
        path = ws.rm_dir(kind, n) / MANIFEST if n is not None else None
        if path is None or not path.exists():
            continue
        held = (read_json(path).get("metrics") or {}).get("heldout")
        by = "; ".join(f"{o} {accuracy_ci(b)}" for o, b in ((held or {}).get("by_origin") or {}).items())
        lines.append(f"{kind} RM v{n} held-out accuracy: {accuracy_ci(held)}" + (f" ({by})" if by else ""))
    return lines
