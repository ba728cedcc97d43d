"""`saferounds demo`: the embedded default, end to end on the tiny preset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import InputError
from saferounds.pipeline.cli.common import JsonOpt, console, open_workspace, print_json, table
from saferounds.pipeline.cli.live import VerboseOpt, live, log_message, step_lines


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "" if x is None else f"{x:.3f}"


def _rate(block) -> str:
    """'20.3% [16.1, 25.2]' from a Rate or WinRate block with ci95; '' without one, 'n/a' for none of n = 0."""
    if not block:
        return ""
    if block.get("n") == 0:
        return "n/a"
    ci = block.get("ci95")
    return _pct(block.get("rate")) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def version_table(rows: list[dict]) -> list[list[str]]:
    """pipeline.demo.version_rows as table cells: every version v0..vN."""
    return [[r["version"], _rate(r["violation"]), _rate(r["false_refusal_borderline"]),
             _rate(r["false_refusal_helpful"]), _num(r["helpfulness_mean"]), _rate(r["gold_win_rate_vs_v0"]),
             r["judged_in"]] for r in rows]


def demo(workspace: Annotated[Optional[Path], typer.Option("-w", "--workspace", help="Demo workspace directory.",
                                                            show_default="demo-workspace, or demo-smollm2")] = None,
         size: Annotated[Optional[str], typer.Option(help="tiny: smoke (about 1.5 min on 2 cores, what CI runs) or default (about "
                                                          "3 min); smollm2: full (the acceptance run), quarter or "
                                                          "mini.")] = None,
         model: Annotated[str, typer.Option(help="tiny (the 0.6M demo model, synthetic data), smollm2 "
                                                 "(SmolLM2-135M-Instruct, real public data, offline), or any causal "
                                                 "chat model with a chat template: a hub id, a local directory or "
                                                 "a .gguf (the smollm2 plan, sizes scaled to it).")] = "tiny",
         data_root: Annotated[Optional[Path], typer.Option(help="smollm2: directory with hh-rlhf/, do-not-answer/ "
                                                                "and xstest/ (offline); without it the public sets "
                                                                "are downloaded from the hub once.")] = None,
         until: Annotated[Optional[str], typer.Option(help="smollm2: stop after this version (vN); a later run "
                                                           "without it goes on from there.")] = None,
         json: JsonOpt = False, verbose: VerboseOpt = False):
    """Run the whole method offline on a CPU: pretrain, SFT, RMs, RS rounds, PPO, reports."""
    from saferounds.core.versions import parse_version

    last = None if until is None else parse_version(until)
    if last is not None and (model == "tiny" or last < 1):
        raise InputError(f"--until {until}: takes v1 or later, with --model smollm2 (or another chat model)")
    if model != "tiny":
        from saferounds.data.hub import public_data_root
        from saferounds.pipeline.demo_model import workspace_name
        from saferounds.pipeline.demo_real import plan_model, run_real_demo

        plan = None if model == "smollm2" else plan_model(model, size or "full")  # exit 2 before any write
        workspace = workspace or Path(workspace_name(model))
        with live(workspace / "logs" / "saferounds.log", verbose) as view:
            view.note(f"saferounds demo --model {model} ({size or 'full'}) in {workspace}: details in "
                      f"{workspace}/versions/vN/logs/stage.log (-v shows them live)")
            result = run_real_demo(workspace, size or "full", public_data_root(data_root),
                                   print_line=step_lines(view), until=last, model=plan)
    else:
        from saferounds.pipeline.demo import run_demo

        workspace = workspace or Path("demo-workspace")
        size = size or "default"
        with live(workspace / "logs" / "saferounds.log", verbose) as view:
            view.note(f"saferounds demo ({size}) in {workspace}: details in {workspace}/versions/vN/logs/stage.log "
                      f"(-v shows them live); curves: tensorboard --logdir {workspace}/runs")
            result = run_demo(workspace, size, progress=log_message)
    if json:
        print_json(result)
        return
    latest = result["latest"]
    console.print(table("saferounds demo: held-out prompts, every version (95% intervals)",
                        ["version", "violation", "false refusal (borderline)", "false refusal (helpful)",
                         "helpfulness RM", "gold win vs v0", "judged in"],
                        version_table(result.get("versions") or [])))
    for version, w in sorted((result.get("helpfulness", {}).get("win_rate") or {}).items()):
        console.print(f"{latest} wins against {version} (helpfulness RM, ties half): {_pct(w.get('rate'))} "
                      f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses)")
    from saferounds.pipeline.cli.rm import status_lines

    for line in status_lines(open_workspace(workspace)):  # held-out RM accuracy with its 95% interval (issue 27)
        console.print(line)
    console.print(f"report: {result['report']}")
    console.print(f"trend over all versions: `saferounds status -w {workspace}`  ({result['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
