"""`saferounds demo`: the embedded default, end to end on the tiny preset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import JsonOpt, console, err_console, print_json, table


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def demo(workspace: Annotated[Path, typer.Option("-w", "--workspace", help="Demo workspace directory.")] = Path("demo-workspace"),
         size: Annotated[str, typer.Option(help="smoke (about 3 min, what CI runs) or default (about 10 min).")] = "default",
         json: JsonOpt = False):
    """Run the whole method offline on a CPU: pretrain, SFT, RMs, RS rounds, PPO, reports."""
    from pipeline.demo import run_demo

    result = run_demo(workspace, size, progress=lambda m: err_console.print(f"[bold cyan]>>[/] {m}"))
    if json:
        print_json(result)
        return
    trend = result.get("trend") or []
    console.print(table("saferounds demo: held-out demo prompts", [
        "version", "violation %", "false refusal % (borderline)", "helpfulness RM", "reference overlap"],
        [[t["version"], _pct(t["safety"].get("violation_rate")),
          _pct(t["safety"].get("false_refusal", {}).get("borderline", {}).get("rate")),
          f"{t['helpfulness'].get('mean_score', 0):.3f}", f"{t['helpfulness'].get('reference_overlap', 0):.3f}"]
         for t in trend]))
    for version, w in (result.get("helpfulness", {}).get("win_rate") or {}).items():
        console.print(f"{result['latest']} win rate against {version} (helpfulness RM): {_pct(w.get('rate'))}")
    console.print(f"report: {result['report']}  ({result['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
