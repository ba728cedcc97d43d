"""`saferounds`: the command line. It only parses, calls library code and prints.

Exit codes: 0 ok, 1 runtime failure, 2 bad input or usage.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from saferounds.core.errors import DivergedError, InputError, as_disk_full, no_space
from saferounds.pipeline.cli import audit, demo, evaluate, feedback, judges, ppo, rm
from saferounds.pipeline.cli.common import (JsonOpt, WorkspaceOpt, console, err_console, fmt, locked, open_workspace, print_json,
                                 table)
from saferounds.pipeline.cli.live import VerboseOpt, live, log_message

app = typer.Typer(name="saferounds", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LLaMA-2-style safety alignment rounds: reward models, rejection sampling, PPO, reports.")
versions_app = typer.Typer(no_args_is_help=True, help="Inspect versions.")
data_app = typer.Typer(no_args_is_help=True, help="Check and convert data files.")
round_app = typer.Typer(no_args_is_help=True, help="Run and manage numbered rounds (versions v1, v2, ...).")
app.add_typer(versions_app, name="versions")
app.add_typer(data_app, name="data")
app.add_typer(round_app, name="round")

@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Workspace directory to create.")] = Path("."),
         preset: Annotated[str, typer.Option(help="tiny (local tiny models + synthetic demo data), smollm2 "
                                                  "(SmolLM2-135M-Instruct + public data) or llama2-7b (a real-model "
                                                  "template to edit).")] = "tiny",
         force: Annotated[bool, typer.Option(help="Overwrite an existing saferounds.yaml.")] = False,
         data_root: Annotated[Optional[Path], typer.Option(help="smollm2: directory with hh-rlhf/, do-not-answer/ "
                                                                "and xstest/ (e.g. ../shared/data); without it the "
                                                                "public sets are downloaded from the hub once.")] = None,
         size: Annotated[Optional[str], typer.Option(help="smollm2: full, quarter or mini data caps.")] = None):
    """Create a workspace with a validated saferounds.yaml."""
    from saferounds.pipeline.presets import init_workspace

    path = init_workspace(directory, preset, force=force, data_root=data_root, data_size=size)
    console.print(f"created {path}")


@app.command()
def status(workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Versions in the workspace: stages, status and headline metrics."""
    from saferounds.pipeline.rounds import list_versions

    from saferounds.core.versions import parse_version
    from saferounds.eval.audit_labels import audit_status

    ws = open_workspace(workspace)
    ws.config  # validates
    rows = list_versions(ws)
    for r in rows:  # whether the eval judges were checked against labels on this version's answers
        r["judges"] = audit_status(ws.root, parse_version(r["version"]))
    from saferounds.pipeline.cli.rm import status_lines

    if json:
        from saferounds.core.tracking import runs_root

        print_json({"workspace": str(ws.root), "versions": rows, "runs": str(runs_root(ws.root)),
                    "logs": str(ws.root / "logs"), "reward_models": status_lines(ws)})
        return
    console.print(table(f"saferounds workspace {ws.root}",
                        ["version", "parent", "status", "stages", "violation %", "false refusal %", "helpfulness",
                         "seconds"],
                        [[r["version"], r["parent"], r["status"],
                          " ".join(f"{x['stage']}:{x['status']}" for x in r["stages"]),
                          _pct(r["headline"]["violation_rate"]), _pct(r["headline"]["false_refusal_rate"]),
                          fmt(r["headline"]["helpfulness"]), r["seconds"]] for r in rows]))
    if rows:  # below the table, so a narrow terminal keeps the table readable
        console.print("judges: " + ", ".join(f"{r['version']} {r['judges']}" for r in rows)
                      + "  (`saferounds audit vN` measures them on a version's answers)")
    for line in status_lines(ws):  # held-out RM accuracy with its 95% interval (issue 27)
        console.print(line)


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


@versions_app.command("show")
def versions_show(version: str, workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """A version's manifest."""
    from saferounds.core.versions import parse_version

    ws = open_workspace(workspace)
    m = ws.manifest(parse_version(version))
    if json:
        print_json(m)
        return
    order = m.get("plan") or list(m["stages"])
    rows = [[s, m["stages"][s].get("status"), m["stages"][s].get("seconds"), m["stages"][s].get("error") or ""]
            for s in order]
    console.print(table(f"{m['version']} (parent {m.get('parent')}) — {m['status']}",
                        ["stage", "status", "seconds", "error"], rows))
    console.print(f"config hash {m['config_hash'][:12]}  reward models {m.get('reward_models')}")
    for name, digest in m.get("inputs", {}).items():
        console.print(f"  input {name}  sha256 {digest[:12]}")


@data_app.command("validate")
def data_validate(file: Annotated[str, typer.Argument(help="A .jsonl/.json/.csv/.parquet file or hub:NAME.")],
                  kind: Annotated[Optional[str], typer.Option(
                      help="prompts | sft | preferences | rankings | text | responses (default: preferences, "
                           "or every kind a detected public dataset gives)")] = None,
                  json: JsonOpt = False):
    """Validate a data file; every bad row is listed as file:line: field: reason. A public dataset
    (PKU-SafeRLHF, UltraFeedback, BeaverTails, HH red-team) is named, with what it would produce."""
    from saferounds.data.inspect import validate_file
    from saferounds.data.inspect import summarize_file

    summary = summarize_file(file, kind)
    if summary is None:
        kind = kind or "preferences"
        n = validate_file(file, kind)
        print_json({"file": file, "kind": kind, "records": n, "ok": True}) if json else \
            console.print(f"{file}: {n} valid {kind} record(s)")
        return
    if json:
        print_json(summary)
        return
    console.print(f"{file}: {summary['format']} (detected from its columns)")
    for k, s in summary["kinds"].items():
        _print_summary(k, s)


def _print_summary(kind: str, s: dict) -> None:
    if kind == "preferences":
        console.print(f"  preferences: {s['records']} pairs ("
                      + ", ".join(f"{n} {src}" for src, n in s["by_source"].items()) + ")")
        for src, ratings in s["by_rating"].items():
            console.print(f"    {src} by rating: " + ", ".join(f"{r} {n}" for r, n in ratings.items()))
        if s["by_safety_label"]:
            console.print("    safety labels: " + ", ".join(f"{k} {n}" for k, n in s["by_safety_label"].items())
                          + f" ({s['dropped_by_safety_rm']} chosen-unsafe/rejected-safe: dropped by the safety RM)")
    elif kind == "prompts":
        console.print(f"  prompts: {s['records']} ({s['safety']} safety) — safety prompts by category: "
                      + (", ".join(f"{c} {n}" for c, n in s["by_category"].items()) or "none"))
    else:
        console.print(f"  responses: {s['records']} ({s['unsafe']} unsafe) — unsafe by category: "
                      + (", ".join(f"{c} {n}" for c, n in s["by_category"].items()) or "none"))
    if s["dropped"]:
        console.print("    dropped: " + ", ".join(f"{k} {n}" for k, n in s["dropped"].items()))


@data_app.command("convert")
def data_convert(file: Annotated[str, typer.Argument(help="A .jsonl/.json/.csv/.parquet file or hub:NAME.")],
                 to: Annotated[str, typer.Option("--to", help="preferences | prompts | responses")],
                 output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL file to write.")],
                 source: Annotated[Optional[str], typer.Option(
                     help="helpfulness | safety: keep only that kind of preference pair")] = None,
                 json: JsonOpt = False):
    """Write a file (a public dataset or our own shapes) as our rows, for inspection or reuse."""
    from saferounds.data.inspect import convert_file

    result = convert_file(file, to, output, source)
    if json:
        print_json(result)
        return
    console.print(f"{file} ({result['format']}): wrote {result['summary']['records']} {to} record(s) to {output}")
    _print_summary(to, result["summary"])


def _v0_step(workspace, step, done: str, verbose: bool = False) -> None:
    ws = open_workspace(workspace)
    with locked(ws), live(ws.root / "logs" / "saferounds.log", verbose):
        metrics = step(ws)
    console.print(f"{done}: held-out loss {fmt(metrics.get('heldout_loss_before'))} -> "
                  f"{fmt(metrics.get('heldout_loss_after'))}")


@app.command()
def pretrain(workspace: WorkspaceOpt = None, verbose: VerboseOpt = False):
    """Step 0: domain pretraining on data.pretrain_text (into the unfinished v0)."""
    from saferounds.pipeline.v0 import run_pretrain

    _v0_step(workspace, run_pretrain, "pretrain done", verbose)


@app.command()
def sft(workspace: WorkspaceOpt = None, verbose: VerboseOpt = False):
    """Step 1: supervised fine-tuning on data.sft, producing versions/v0 (with model.v0: given, v0 is model.policy
    as it is)."""
    from saferounds.pipeline.v0 import run_given, run_sft

    ws = open_workspace(workspace)
    _v0_step(ws.root, run_given if ws.config.model.v0 == "given" else run_sft, "v0 done", verbose)


@round_app.command("run")
def round_run(workspace: WorkspaceOpt = None, json: JsonOpt = False,
              until: Annotated[Optional[str], typer.Option(help="Stop after this stage.")] = None,
              verbose: VerboseOpt = False):
    """Create the next version from the plan (or resume an unfinished one) and run its stages."""
    from saferounds.pipeline.rounds import run_round

    ws = open_workspace(workspace)
    with locked(ws), live(ws.root / "logs" / "saferounds.log", verbose):
        result = run_round(ws, progress=log_message, until=until)
    if json:
        print_json({k: v for k, v in result.items() if k != "manifest"})
    else:
        console.print(f"v{result['version']}: {result['status']}")


@round_app.command("list")
def round_list(workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """All versions with their status (same as `status`)."""
    status(workspace, json)


@round_app.command("show")
def round_show(version: str, workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Stages, timings, scores and lineage of a version."""
    from saferounds.core.versions import parse_version

    ws = open_workspace(workspace)
    n = parse_version(version)
    versions_show(version, workspace, json)
    if json:
        return
    lineage, m = [], ws.manifest(n)
    while m is not None:
        lineage.append(m["version"])
        parent = m.get("parent")
        m = ws.manifest(int(parent[1:])) if parent else None
    console.print("lineage: " + " <- ".join(lineage))
    from saferounds.pipeline.rounds import flatten

    for stage, metrics in ws.manifest(n).get("metrics", {}).items():
        flat = {k: v for k, v in flatten(metrics or {}).items()
                if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        console.print(f"  {stage}: " + ", ".join(f"{k}={fmt(v)}" for k, v in list(flat.items())[:12]))


@round_app.command("diff")
def round_diff(a: str, b: str, workspace: WorkspaceOpt = None, json: JsonOpt = False):
    """Config and metric differences between two versions."""
    from saferounds.core.versions import parse_version
    from saferounds.pipeline.rounds import diff_versions

    ws = open_workspace(workspace)
    d = diff_versions(ws, parse_version(a), parse_version(b))
    if json:
        print_json(d)
        return
    for section, changes in d.items():
        if changes:
            console.print(table(f"{section}: {a} vs {b}", ["key", a, b],
                                [[k, fmt(x), fmt(y)] for k, (x, y) in changes.items()]))


@round_app.command("discard")
def round_discard(version: str, workspace: WorkspaceOpt = None):
    """Delete an unfinished version, or the newest finished one."""
    from saferounds.core.versions import parse_version

    ws = open_workspace(workspace)
    with locked(ws):
        ws.discard(parse_version(version))
    console.print(f"discarded {version}")


# The other CLI areas, one module each; its `register` adds its commands to `app`. A new area: a module
# in pipeline/cli/ with a `register(app)`, and a row here.
AREAS = {
    "rm": rm.register,                      # saferounds rm train|eval
    "eval, report": evaluate.register,      # saferounds eval|report VERSION
    "audit": audit.register,                # saferounds audit VERSION (the judges against labels)
    "ppo": ppo.register,                    # saferounds ppo (outside a round)
    "label, annotate": feedback.register,   # AI feedback from an LLM judge; the human ranking loop
    "judges": judges.register,              # saferounds judges train|score (learned refusal and harm judges)
    "demo": demo.register,                  # saferounds demo
}
for register in AREAS.values():
    register(app)


def _click_errors() -> tuple[type, ...]:
    """typer bundles its own copy of click; catch usage errors from either."""
    import click

    found = [click.exceptions.ClickException]
    try:
        from typer._click import exceptions as bundled

        found.append(bundled.ClickException)
    except ImportError:
        pass
    return tuple(found)


_CLICK_ERRORS = _click_errors()


INTERRUPTED = 130  # the shell's code for Ctrl-C (128 + SIGINT)


def _environment() -> None:
    """SAFEROUNDS_LOG (a logging level; what the log files and -v get), SAFEROUNDS_THREADS (torch threads)."""
    level = (os.environ.get("SAFEROUNDS_LOG") or "WARNING").upper()  # set but empty: the default
    if not isinstance(logging.getLevelName(level), int):
        raise InputError(f"SAFEROUNDS_LOG={level!r}: expected DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # bitsandbytes warns at import on every CPU machine about optional CPU 4-bit kernels we never use
    logging.getLogger("bitsandbytes").setLevel(max(logging.ERROR, logging.getLevelName(level)))
    threads = os.environ.get("SAFEROUNDS_THREADS")
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise InputError(f"SAFEROUNDS_THREADS={threads!r}: expected a positive integer")
        import torch

        torch.set_num_threads(int(threads))
    # SAFEROUNDS_QUIET=1: plain progress lines (pipeline.cli.live); load reports and bars go to the log


def _one_voice() -> None:
    """Under `accelerate launch` only rank 0 prints results and progress; every rank still prints
    its `error:` line (core.distributed names the rank that failed)."""
    from saferounds.core import distributed as dist

    if not dist.is_main():
        console.quiet = err_console.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - print_json writes here


def main(argv: list[str] | None = None) -> int:
    try:
        _environment()
        _one_voice()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from saferounds.core import distributed as dist

    everyone = {"here": False}  # every rank of a launch ends here too: they may meet before tearing down
    try:
        return _run_app(argv, everyone)
    finally:
        dist.shutdown(meet=everyone["here"])


def _run_app(argv: list[str] | None, everyone: dict) -> int:
    from saferounds.core.distributed import synced

    try:
        try:
            rv = app(args=argv, standalone_mode=False)  # typer.Exit(n) comes back as n here
        except BaseException as e:
            everyone["here"] = synced(e)  # failed at a meeting point: every rank raised it
            raise
        everyone["here"] = True
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:  # a runtime failure with one cause: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        rv = INTERRUPTED
    except _CLICK_ERRORS as e:  # usage errors carry their own exit code (2)
        e.show()
        return e.exit_code
    except Exception as e:  # a full disk, however a library wrapped it: one line naming the path
        if not no_space(e):
            raise
        print(f"error: {as_disk_full(e)}", file=sys.stderr)
        return 1
    if rv == INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
        print("interrupted: run the same command again to resume where it stopped", file=sys.stderr)
    return rv if isinstance(rv, int) else 0


def entry() -> None:
    from saferounds.core import distributed as dist

    dist.exit_process(main())  # under a launcher: os._exit after the group is torn down (no teardown abort)
