"""`saferounds demo`: the embedded default, end to end on the tiny preset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import JsonOpt, console, err_console, print_json, table


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def demo(workspace: Annotated[Path, typer.Option("-w", "--workspace", help="Demo workspace directory.")] = Path("demo-workspace"),
         size: Annotated[str, typer.Option(help="smoke (about 1.5 min on 2 CPU cores, what CI runs) or default (about 3 min).")] = "default",
         json: JsonOpt = False):
    """Run the whole method offline on a CPU: pretrain, SFT, RMs, RS rounds, PPO, reports."""
    from pipeline.demo import run_demo

    result = run_demo(workspace, size, progress=lambda m: err_console.print(f"[bold cyan]>>[/] {m}"))
    if json:
        print_json(result)
        return
    latest = result["latest"]
    rows = [[v, _pct(c["safety"].get("violation_rate")),
             _pct(c["safety"].get("false_refusal", {}).get("borderline", {}).get("rate")),
             _pct(c["safety"].get("false_refusal", {}).get("helpful", {}).get("rate")),
             f"{c['helpfulness'].get('mean_score', 0):.3f}", f"{c['helpfulness'].get('reference_overlap', 0):.3f}"]
            for v, c in [*sorted(result.get("compared", {}).items()), (latest, result.get("final", {}))]
            if c]
    console.print(table(f"saferounds demo: held-out prompts, every version judged by {latest}'s judges",
                        ["version", "violation", "false refusal (borderline)", "false refusal (helpful)",
                         "helpfulness RM", "reference overlap"], rows))
    for version, w in sorted((result.get("helpfulness", {}).get("win_rate") or {}).items()):
        console.print(f"{latest} wins against {version} (helpfulness RM, ties half): {_pct(w.get('rate'))} "
                      f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses)")
    console.print(f"report: {result['report']}")
    console.print(f"trend over all versions: `saferounds status -w {workspace}`  ({result['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
