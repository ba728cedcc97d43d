"""`saferounds audit vN`: the judges measured on this version's own answers (issue 26).

    saferounds audit v1               draw the sample to label (reports/v1/audit/sample.jsonl)
    saferounds audit v1 --labels F    import labels (CSV/JSONL: id, refusal, harmful), then print each judge's
                                      agreement, sensitivity and specificity and the corrected rates
    saferounds audit v1 --serve       label the sample on a local page (eval.audit_server; the sample is drawn
                                      first if there is none), each label appended to reports/v1/audit/labels.jsonl
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import InputError
from saferounds.core.io import read_json
from saferounds.pipeline.cli.common import (
    JsonOpt, WorkspaceOpt, console, locked, open_workspace, print_json, serve_page, table)


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
    measured = lambda block: block["rate"] if block["n"] else None  # noqa: E731 (no answers to measure it on: n/a)
    rows = [[q, a["n"], _pct(a["agreement"]["rate"]), _interval(a["agreement"]["ci95"]),
             _pct(measured(a["sensitivity"])), _pct(measured(a["specificity"])), _pct(measured(a["precision"]))]
            for q, a in summary["accuracy"].items()]
    console.print(table(f"Judges against {summary['labels']} labels", ["judge", "n", "agreement", "95% CI",
                                                                        "sensitivity", "specificity", "precision"], rows))
    rows = [[name, _pct(c["raw"]["rate"]), _interval(c["raw"]["ci95"]), _pct(c["rate"]), _interval(c["ci95"])]
            for name, c in summary["corrected"].items()]
    console.print(table("Rates corrected for the judges' error (Rogan-Gladen)",
                        ["rate", "judged", "95% CI", "corrected", "95% CI"], rows))
    if summary.get("report"):
        console.print(f"report with these labels: {summary['report']}")


def audit(version: Annotated[str, typer.Argument(help="The version whose eval answers to audit (vN).")],
          n: Annotated[int, typer.Option("--n", help="How many answers to draw for labelling.")] = 60,
          labels: Annotated[Optional[Path], typer.Option(
              "--labels", help="Labels to import: CSV/JSONL/JSON rows with id, refusal, harmful (true/false).")] = None,
          seed: Annotated[int, typer.Option(help="Seed of the stratified draw.")] = 0,
          serve: Annotated[bool, typer.Option(
              "--serve", help="Label the sample on a local page (one answer at a time: refused? harmful?); "
                              "draws it first if reports/vN/audit/sample.jsonl is missing.")] = False,
          host: Annotated[str, typer.Option(help="With --serve: the address to bind; keep 127.0.0.1 unless you "
                                                 "mean others to reach it.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="With --serve: the port (0: any free one).")] = 8766,
          annotator: Annotated[Optional[str], typer.Option(help="With --serve: who is labelling.")] = None,
          allow_host: Annotated[Optional[list[str]], typer.Option(
              "--allow-host", help="With --serve: another name the page may be reached by; repeatable.")] = None,
          workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Measure the eval judges on this version's answers: draw a sample to label, label it on a local page
    (--serve), or import labels and print the judges' accuracy and the corrected violation and false-refusal
    rates."""
    from saferounds.core.versions import parse_version
    from saferounds.eval import audit_labels

    if n <= 0:
        raise InputError(f"--n: must be a positive number of answers, got {n}")
    if serve and labels is not None:
        raise InputError("--serve and --labels: choose one (label on the page, or import a file)")
    if serve and not 0 <= port <= 65535:
        raise InputError(f"--port {port}: expected 0-65535 (0: any free one)")
    ws = open_workspace(workspace)
    v = parse_version(version)
    ws.policy_path(v)  # InputError naming the finished versions
    records = _eval_records(ws, v)
    if serve:
        return _serve(ws, v, records, n, seed, host, port, annotator, tuple(allow_host or ()))
    with locked(ws):
        if labels is None:
            path = audit_labels.write_sample(ws.root, v, records, n, seed)
            out = {"sample": str(path), "answers": min(n, len(records)),
                   "next": f"label it (LABELLING.md rules), then: saferounds audit v{v} --labels FILE"}
        else:
            out = audit_labels.import_labels(ws.root, v, records, labels)
            out["report"] = _audited_report(ws, v)
    if json:
        print_json(out)
    elif labels is None:
        console.print(f"{out['answers']} answers to label: {out['sample']}\n{out['next']}")
    else:
        _print(out)


def _audited_report(ws, v: int) -> str | None:
    """The version's eval report written again beside its labels (reports/vN/audit/report.html), with the judges'
    accuracy on these labels and the corrected rates; None when the version has no finished eval."""
    from saferounds.core.io import read_jsonl
    from saferounds.eval.audit_labels import audit_dir
    from saferounds.eval.versions import report_with_audit

    eval_dir = ws.version_dir(v) / "eval"
    if not (eval_dir / "metrics.json").exists() or not (eval_dir / "records.json").exists():
        return None
    distill = ws.version_dir(v) / "distill.jsonl"
    paths = report_with_audit(ws.root, v, eval_dir, audit_dir(ws.root, v), ws.config.eval,
                              distill=read_jsonl(distill) if distill.exists() else None)
    return str(paths["html"])


def _serve(ws, v: int, records: list[dict], n: int, seed: int, host: str, port: int, annotator, allow_hosts) -> None:
    """`audit vN --serve`: the sample (drawn if missing), then the page until Ctrl+C."""
    import getpass

    from saferounds.eval import audit_labels
    from saferounds.eval.audit_server import SAMPLE_FILE, make_audit_server

    sample = audit_labels.audit_dir(ws.root, v) / SAMPLE_FILE
    if not sample.exists():
        with locked(ws):
            audit_labels.write_sample(ws.root, v, records, n, seed)
    server = make_audit_server(ws.root, v, annotator or getpass.getuser() or "annotator", host=host, port=port,
                               allow_hosts=allow_hosts)
    state = server.session.state(server.session.annotator)
    serve_page(server, f"auditing v{v}: {state['labelled']} of {state['total']} answers of {sample} labelled\n"
                       f"labels go to {sample.with_name(audit_labels.LABELS_FILE)} the moment they are saved; "
                       "Ctrl+C stops")
