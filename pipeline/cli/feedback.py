"""`saferounds label` (AI feedback from an LLM judge) and `saferounds annotate export|import` (people)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from saferounds.core.errors import InputError
from saferounds.core.io import output_file, write_jsonl
from saferounds.pipeline.cli.common import (JsonOpt, WorkspaceOpt, console, err_console, fmt, open_workspace, print_json,
                                            serve_page, table)

annotate_app = typer.Typer(no_args_is_help=True, help="The human loop: rank K samples per prompt on a local page "
                                                      "(serve) or in a file (export/import); agreement (stats).")


class JudgeFailed(click.ClickException):
    exit_code = 1


def register(app: typer.Typer) -> None:
    app.command("label")(label)
    app.add_typer(annotate_app, name="annotate")


def _judge_config(workspace: Path | None, spec: str | None, overrides: dict):
    from dataclasses import replace

    from saferounds.pipeline.config import CONFIG_NAME, load_config
    from saferounds.reward_models.config import JudgeConfig
    from saferounds.reward_models.feedback.judges import parse_judge_spec

    ws = workspace or Path.cwd()
    cfg = load_config(ws / CONFIG_NAME).judge if (ws / CONFIG_NAME).exists() else JudgeConfig()
    if spec:
        try:
            cfg = parse_judge_spec(spec, cfg)
        except ValueError as e:
            raise InputError(str(e)) from None
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if not cfg.model:
        raise InputError("--judge: no judge configured; pass --judge openai:MODEL@URL or hf:MODEL, "
                         "or set judge.model in saferounds.yaml")
    return cfg, ws


def label(
    input: Annotated[str, typer.Option("--input", "-i", help="Samples: K responses per prompt (samples.jsonl "
                                                                "rows, or rows with `responses`); .jsonl/.json/.csv/.parquet.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the preference pairs (or scores) go (.jsonl).")],
    judge: Annotated[Optional[str], typer.Option(help="openai:MODEL@BASE_URL#KEY_ENV (@BASE_URL and #KEY_ENV "
                                                      "optional) or hf:MODEL_ID_OR_PATH; default: the workspace's "
                                                      "`judge` section.")] = None,
    mode: Annotated[str, typer.Option(help="pairs: pairwise preferences; scores: the judge's 1-10 score "
                                           "(as 0..1) per sample.")] = "pairs",
    guideline: Annotated[Optional[str], typer.Option(help="auto (safety for is_safety prompts) | helpfulness | safety")] = None,
    max_pairs: Annotated[Optional[int], typer.Option(help="Pairs per prompt from its K samples (0 = all).")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Parallel requests.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Judge cache (sqlite); default OUTPUT.judge_cache.sqlite.")] = None,
    workspace: WorkspaceOpt = None,
    json: JsonOpt = False,
):
    """Label samples with an LLM judge (RLAIF): both orders per pair, disagreement -> unsure; cached and resumable."""
    from saferounds.core.io import read_rows
    from saferounds.reward_models.feedback.judges import JudgeError, make_judge
    from saferounds.reward_models.feedback.labeling import group_samples, judge_scores, label_groups

    if mode not in ("pairs", "scores"):
        raise InputError(f"--mode: expected pairs or scores, got {mode!r}")
    if guideline not in (None, "auto", "helpfulness", "safety"):
        raise InputError(f"--guideline: expected auto, helpfulness or safety, got {guideline!r}")
    if max_pairs is not None and max_pairs < 0 or concurrency is not None and concurrency < 1:
        raise InputError("--max-pairs must be >= 0 and --concurrency >= 1")
    cfg, ws = _judge_config(workspace, judge, {"guideline": guideline, "max_pairs_per_prompt": max_pairs,
                                               "concurrency": concurrency})
    groups = group_samples(read_rows(input), where=input)  # bad input fails before any request or write
    check_label_groups(groups, input, mode)
    cache_path = cache or (Path(cfg.cache_path) if cfg.cache_path else Path(str(output) + ".judge_cache.sqlite"))
    if cfg.cache_path and not cache and not cache_path.is_absolute():
        cache_path = ws / cache_path
    output_file(output, "--output", [input])
    output_file(cache_path, "--cache" if cache else "judge.cache_path", [input, output])
    done = {"n": 0}

    def progress(i: int, total: int) -> None:
        if i == total or i - done["n"] >= max(1, total // 20):
            done["n"] = i
            err_console.print(f"[bold cyan]>>[/] {i}/{total} judged")

    try:
        with make_judge(cfg, cache_path=cache_path) as j:
            if mode == "scores":
                flat = [(g, r) for g in groups for r in g["responses"]]
                scores = judge_scores(j, [g for g, _ in flat], [r for _, r in flat], progress)
                rows = [{"prompt_id": g["id"], "messages": g["messages"], "is_safety": g["is_safety"],
                         "response": r, "judge_score": s} for (g, r), s in zip(flat, scores)]
                missing = [r for r in rows if r["judge_score"] is None]
            else:
                rows, missing = label_groups(j, groups, progress)
            requests, hits = j.requests, j.cache_hits
    except JudgeError as e:  # a runtime failure: exit 1 (the cache keeps every verdict already paid for)
        raise JudgeFailed(str(e)) from None
    missing_path = Path(str(output).removesuffix(".jsonl") + ".missing.jsonl")
    if missing and len(missing) == (len(rows) if mode == "scores" else len(rows) + len(missing)):
        if mode == "pairs":
            write_jsonl(missing_path, missing)
        raise JudgeFailed(f"label: none of the judge's {len(missing)} verdicts could be read (after "
                          f"judge.parse_retries={cfg.parse_retries} re-asks each), so {output} was not written"
                          + (f"; the unjudged pairs are in {missing_path}" if mode == "pairs" else "")
                          + f". Check that {cfg.backend}:{cfg.model} ends its answers with the asked lines "
                            "('Better: A|B' and 'Strength: ...', or 'Score: N'), or use a stronger judge model")
    write_jsonl(output, rows)
    if mode == "pairs":
        write_jsonl(missing_path, missing)
    summary = {"output": str(output), "mode": mode, "records": len(rows), "missing": len(missing),
               "unsure": sum(r.get("rating") == "unsure" for r in rows), "judge": f"{cfg.backend}:{cfg.model}",
               "requests": requests, "cache_hits": hits, "cache": str(cache_path)}
    if json:
        print_json(summary)
    else:
        console.print(table("label", list(summary), [list(summary.values())]))


def check_label_groups(groups: list[dict], where: str, mode: str) -> None:
    """Labelling needs something to compare: no samples, or one response per prompt (no pair to judge),
    is bad input, not a run that writes an empty file and exits 0."""
    if not groups:
        raise InputError(f"{where}: no samples to label (the file is empty)")
    if mode == "pairs" and all(len(g["responses"]) < 2 for g in groups):
        raise InputError(f"{where}: every prompt has one response; pairwise labels need at least two "
                         "different responses per prompt (K >= 2 samples), or use --mode scores")


@annotate_app.command("export")
def annotate_export(
    input: Annotated[str, typer.Option("--input", "-i", help="Samples with K responses per prompt (e.g. versions/vN/samples.jsonl).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The items to rank (.jsonl); kept as the reference for import.")],
    csv: Annotated[Optional[Path], typer.Option(help="The same items as CSV for spreadsheets; default OUTPUT with .csv.")] = None,
    json: JsonOpt = False,
):
    """Write K samples per prompt for people to rank (JSONL and CSV)."""
    from saferounds.core.io import read_rows
    from saferounds.reward_models.feedback.annotation import export_annotation
    from saferounds.reward_models.feedback.labeling import group_samples

    csv_path = csv or output.with_suffix(".csv")
    output_file(output, "--output", [input])
    output_file(csv_path, "--csv", [input, output])
    groups = group_samples(read_rows(input), where=input)
    n = export_annotation(groups, output, csv_path)
    info = {"prompts": n, "jsonl": str(output), "csv": str(csv_path)}
    if json:
        print_json(info)
    else:
        console.print(f"{n} prompts to rank: {output} and {csv_path}\nFill `ranking` (best first, e.g. 2>1>3), "
                      "optionally `ratings` (K-1 of significantly_better|better|slightly_better|negligibly_better|"
                      "unsure between neighbours) and `safety` (safe|unsafe per response), then "
                      "`saferounds annotate import`.")


@annotate_app.command("import")
def annotate_import(
    input: Annotated[str, typer.Option("--input", "-i", help="The filled file (.jsonl/.csv/.json/.parquet).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Ranking records (.jsonl) for data.rankings.")],
    export: Annotated[Optional[str], typer.Option(help="The JSONL that `annotate export` wrote; omit it when "
                                                       "--input holds ranking records (annotations/rankings.jsonl "
                                                       "from `annotate serve`).")] = None,
    pairs: Annotated[Optional[Path], typer.Option(help="Also write the rankings as preference pairs (.jsonl).")] = None,
    scores: Annotated[Optional[Path], typer.Option(help="Also write Elo rewards per response (.jsonl).")] = None,
    json: JsonOpt = False,
):
    """Validate people's rankings, ratings and safety labels; write rankings (and pairs / Elo scores)."""
    from saferounds.reward_models.feedback.annotation import annotation_pairs, import_annotation, import_rankings
    from saferounds.reward_models.rankings import elo_rewards

    outputs = {"--output": output, "--pairs": pairs, "--scores": scores}
    for flag, path in outputs.items():
        if path is not None:
            output_file(path, flag, [input, *([export] if export else []),
                                     *(p for f, p in outputs.items() if p is not None and f != flag)])
    # both raise InputError (file:line) before any write
    records, unranked = import_annotation(input, export) if export else (import_rankings(input), 0)
    write_jsonl(output, records)
    info = {"rankings": len(records), "unranked": unranked, "output": str(output)}
    if pairs:
        rows = [p for r in records for p in annotation_pairs(r)]
        write_jsonl(pairs, rows)
        info.update(pairs=len(rows), pairs_output=str(pairs))
    if scores:
        rows = [{"prompt_id": r["id"], "prompt": r["prompt"], "response": resp, "reward": reward, "source": r["source"]}
                for r in records for resp, reward in elo_rewards(r)]
        write_jsonl(scores, rows)
        info.update(scores=len(rows), scores_output=str(scores))
    if json:
        print_json(info)
    else:
        console.print(table("annotate import", list(info), [list(info.values())]))


def _served_version(ws, version: str | None) -> tuple[int, Path]:
    """versions/vN/samples.jsonl (the rs stage's K samples per prompt) of vN, or of the latest version with one."""
    from saferounds.core.versions import parse_version

    if version is not None:
        n = parse_version(version)
        path = ws.require_finished(n) / "samples.jsonl"
        if not path.exists():
            raise InputError(f"{path}: v{n} has no samples (a version has them when its round ran the rs stage)")
        return n, path
    for n in reversed(ws.finished_versions()):
        if (ws.version_dir(n) / "samples.jsonl").exists():
            return n, ws.version_dir(n) / "samples.jsonl"
    raise InputError(f"{ws.versions_dir}: no finished version has samples.jsonl; run a round with the rs stage "
                     "or pass --version")


@annotate_app.command("serve")
def annotate_serve(
    workspace: WorkspaceOpt = None,
    version: Annotated[Optional[str], typer.Option(help="Whose samples to rank (vN); default: the latest "
                                                        "finished version with samples.jsonl.")] = None,
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = 8765,
    annotator: Annotated[Optional[str], typer.Option(help="Who is ranking (the page's default; "
                                                          "&annotator=NAME in the URL for another person).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean others to reach it.")]
    = "127.0.0.1",
    allow_host: Annotated[Optional[list[str]], typer.Option(
        "--allow-host", help="Another name the page may be reached by (a DNS alias, a proxy); repeatable. "
                             "Loopback names, and with --host 0.0.0.0 this machine's name and addresses, "
                             "are always accepted.")] = None,
):
    """A local page to rank K samples per prompt; each judgement is appended to annotations/rankings.jsonl at once."""
    import getpass

    from rich.markup import escape

    from saferounds.pipeline.config import CONFIG_NAME, load_config
    from saferounds.reward_models.feedback.annotate_server import RANKINGS_FILE, make_server

    ws = open_workspace(workspace)
    n, samples = _served_version(ws, version)
    server = make_server(ws.root, n, samples, annotator or getpass.getuser() or "annotator", host=host, port=port,
                         allow_hosts=tuple(allow_host or ()))
    listed = ws.exists() and any(ws.resolve(f) == ws.root / RANKINGS_FILE
                                 for f in load_config(ws.root / CONFIG_NAME).data.rankings)
    notes = [f"ranking v{n}: {len(server.session.items)} prompts from {samples}\n"
             f"judgements go to {ws.root / RANKINGS_FILE} the moment they are made; Ctrl+C stops"]
    if not listed:
        notes.append("[yellow]note:[/] for the rm stage to train on them, add to saferounds.yaml:  "
                     + escape(f"data: {{rankings: [{RANKINGS_FILE}]}}"))
    serve_page(server, *notes)


@annotate_app.command("stats")
def annotate_stats(
    workspace: WorkspaceOpt = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="Ranking records with `annotator` "
                                                                      "(default: annotations/rankings.jsonl).")] = None,
    json: JsonOpt = False,
):
    """Agreement between annotators on the same prompts: Kendall's tau of rankings, safety-label agreement."""
    from saferounds.core.io import read_rows
    from saferounds.reward_models.feedback.agreement import pairwise_agreement
    from saferounds.reward_models.feedback.annotate_server import RANKINGS_FILE, SKIPPED_FILE

    ws = open_workspace(workspace)
    path = input or str(ws.root / RANKINGS_FILE)
    records = [row for _, row in read_rows(path)]
    skipped = [row for _, row in read_rows(ws.root / SKIPPED_FILE)] if not input and (ws.root / SKIPPED_FILE).exists() else []
    people: dict[str, dict] = {}
    for r in records:
        people.setdefault(r.get("annotator") or "?", {"ranked": 0, "skipped": 0, "flagged": 0})["ranked"] += 1
    for r in skipped:
        kind = "flagged" if r.get("action") == "flagged" else "skipped"
        people.setdefault(r.get("annotator") or "?", {"ranked": 0, "skipped": 0, "flagged": 0})[kind] += 1
    pairs = pairwise_agreement(records)
    if json:
        return print_json({"input": path, "annotators": people, "pairs": pairs})
    console.print(table(f"annotators ({path})", ["annotator", "ranked", "skipped", "flagged"],
                        [[n, c["ranked"], c["skipped"], c["flagged"]] for n, c in sorted(people.items())]))
    if not pairs:
        console.print("no two annotators ranked the same prompt yet: nothing to compare")
        return
    console.print(table("pairwise agreement", ["annotators", "prompts", "kendall_tau", "same_best",
                                               "safety_labels", "safety_agreement", "safety_kappa"],
                        [[" / ".join(p["annotators"]), p["prompts"], fmt(p["kendall_tau"]), fmt(p["same_best"]),
                          p["safety"]["labels"], fmt(p["safety"]["agreement"]), fmt(p["safety"]["kappa"])]
                         for p in pairs]))
