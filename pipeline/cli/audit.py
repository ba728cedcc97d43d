"""`saferounds audit vN`: the judges measured on this version's own answers (issue 26).

    saferounds audit v1               draw the sample to label (reports/v1/audit/sample.jsonl)
    saferounds audit v1 --labels F    import labels (CSV/JSONL: id, refusal, harmful), then print each judge's
                                      agreement, sensitivity and specificity and the corrected rates
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import InputError
from saferounds.core.io import read_json
from saferounds.pipeline.cli.common import JsonOpt, WorkspaceOpt, console, locked, open_workspace, print_json, table


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)


def _pct(rate) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def _interval(ci) -> str:
    return "n/a" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _eval_records(ws, n: int) -> list[dict]:
    for path in (ws.version_dir(n) / "eval" / "records.json", ws.root / "reports" / f"v{n}" / "eval" / "records.json"):
        if path.exists():
            return read_json(path)
    raise InputError(f"v{n} has no evaluated answers (versions/v{n}/eval/records.json); run "
                     f"`saferounds eval v{n}` first")


def _print(summary: dict) -> None:
    rows = [[q, a["n"], _pct(a["agreement"]["rate"]), _interval(a["agreement"]["ci95"]),
             _pct(a["sensitivity"]["rate"]), _pct(a["specificity"]["rate"]), _pct(a["precision"]["rate"])]
            for q, a in summary["accuracy"].items()]
    console.print(table(f"Judges against {summary['labels']} labels", ["judge", "n", "agreement", "95% CI",
                                                                        "sensitivity", "specificity", "precision"], rows))
    rows = [[name, _pct(c["raw"]["rate"]), _interval(c["raw"]["ci95"]), _pct(c["rate"]), _interval(c["ci95"])]
            for name, c in summary["corrected"].items()]
    console.print(table("Rates corrected for the judges' error (Rogan-Gladen)",
                        ["rate", "judged", "95% CI", "corrected", "95% CI"], rows))


def audit(version: Annotated[str, typer.Argument(help="The version whose eval answers to audit (vN).")],
          n: Annotated[int, typer.Option("--n", help="How many answers to draw for labelling.")] = 60,
          labels: Annotated[Optional[Path], typer.Option(
              "--labels", help="Labels to import: CSV/JSONL/JSON rows with id, refusal, harmful (true/false).")] = None,
          seed: Annotated[int, typer.Option(help="Seed of the stratified draw.")] = 0,
          workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Measure the eval judges on this version's answers: draw a sample to label, or import labels and print
    the judges' accuracy and the corrected violation and false-refusal rates."""
    from saferounds.core.versions import parse_version
    from saferounds.eval import audit_labels

    if n <= 0:
        raise InputError(f"--n: must be a positive number of answers, got {n}")
    ws = open_workspace(workspace)
    v = parse_version(version)
    ws.policy_path(v)  # InputError naming the finished versions
    records = _eval_records(ws, v)
    with locked(ws):
        if labels is None:
            path = audit_labels.write_sample(ws.root, v, records, n, seed)
            out = {"sample": str(path), "answers": min(n, len(records)),
                   "next": f"label it (LABELLING.md rules), then: saferounds audit v{v} --labels FILE"}
        else:
            out = audit_labels.import_labels(ws.root, v, records, labels)
    if json:
        print_json(out)
    elif labels is None:
        console.print(f"{out['answers']} answers to label: {out['sample']}\n{out['next']}")
    else:
        _print(out)
