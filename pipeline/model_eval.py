"""`saferounds eval --model ID|PATH|GGUF --out DIR`: how safe is this checkpoint, without a workspace.

The same code path as a version's eval (eval.versions.evaluate_policies): the same metrics.json, report.md,
report.html and records.json, the same judges (the default ones of `saferounds judges train --default`, or
--judges DIR, copied into OUT/judges so the report says which it used), and the smollm2 preset's eval and
generation settings, so the SmolLM2 GGUF's answers here and a demo workspace's v0 answers are one cache entry.

  1. the model (and every --against model) as a local checkpoint: pipeline.models.resolve_source
     (a .gguf converted once into ~/.cache/saferounds/models, a hub id downloaded once)
  2. the suites (--suite, as `saferounds eval`), --against REPORT: that report's cached answers
  3. evaluate_policies with OUT as the root: answers through the per-machine cache (eval.answer_cache)
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from saferounds.core.errors import InputError
from saferounds.core.io import read_json
from saferounds.pipeline.config import parse_config
from saferounds.pipeline.presets import preset_text

PRESET = "smollm2"  # its eval and model sections: generation settings, judges, batch sizes


def model_label(name: str) -> str:
    """A file-safe name for a model in reports and cache paths: the hub id's or path's last part."""
    stem = Path(str(name).rstrip("/")).name
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"


def model_config(policy: Path, limit: int | None = None, prompt_column: str | None = None):
    """The preset's config with model.policy = the checkpoint (eval.max_prompts_per_suite = limit)."""
    data = yaml.safe_load(preset_text(PRESET))
    data["model"]["policy"] = str(policy)
    data["eval"]["suites"] = []
    if limit is not None:
        data["eval"]["max_prompts_per_suite"] = limit
    if prompt_column:
        data["eval"]["prompt_column"] = prompt_column
    return parse_config(data, f"the {PRESET} preset")


def use_judges(out: Path, judges: Path | None) -> None:
    """--judges DIR (refusal/ and/or harm/, as WS/judges or `judges train --out`) copied into OUT/judges, where
    the eval reads a workspace's judges; without it the default judges are used (OUT/judges removed)."""
    target = out / "judges"
    if judges is None:
        if target.exists():
            shutil.rmtree(target)
        return
    judges = Path(judges)
    kinds = [k for k in ("refusal", "harm") if (judges / k / "config.json").is_file()]  # prepare checked: >= 1
    if judges.resolve() == target.resolve():
        return
    if target.exists():
        shutil.rmtree(target)
    for k in kinds:
        shutil.copytree(judges / k, target / k)


def report_answers(report: Path) -> tuple[str, Path]:
    """(model name, generations/NAME/) of --against REPORT, an earlier `eval --model` output; InputError else."""
    metrics = report / "metrics.json"
    if not metrics.is_file():
        raise InputError(f"--against {report}: no metrics.json there; name a model or an `eval --model` output")
    name = str(read_json(metrics).get("version") or model_label(report))
    src = report / "generations" / name
    if not src.is_dir():
        raise InputError(f"--against {report}: no answers in {src}; compare with a report that `eval --model` wrote")
    return name, src


def against_report(out: Path, report: Path, taken: set[str]) -> str:
    """The name of --against REPORT in this run (its own, or NAME-report when taken); its answers are copied
    into OUT's cache of that name, so they are read, never generated."""
    name, src = report_answers(report)
    name = name if name not in taken else f"{name}-report"
    if src.resolve() != (out / "generations" / name).resolve():
        shutil.copytree(src, out / "generations" / name, dirs_exist_ok=True)
    return name


def loader(cfg, reports: set[Path]) -> Callable[[Path], tuple]:
    """load_policy for evaluate_policies: a checkpoint on the accelerator in the generation dtype; a report's
    answers are all cached, so asking to load one means a suite it was not run on."""
    def load(path: Path) -> tuple:
        from saferounds.core.accelerator import to_accelerator
        from saferounds.pipeline.models import load_policy, to_generation_dtype

        if Path(path) in reports:
            raise InputError(f"--against {path}: it has no answers to some prompts of these suites; compare with "
                             "a report run on the same --suite")
        model, tok = load_policy(path, cfg.model)
        return to_accelerator(to_generation_dtype(model, cfg.model)), tok
    return load


def default_models_dir() -> Path:
    """Where an outside .gguf is converted once per machine: $SAFEROUNDS_HOME/models, else
    ~/.cache/saferounds/models."""
    home = os.environ.get("SAFEROUNDS_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "saferounds") / "models"


@dataclass
class ModelEval:
    """What `eval --model` will run, every input checked (nothing written but a GGUF's one-time conversion)."""
    name: str
    policies: dict[str, Path]
    config: object
    suites: list
    out: Path
    judges: Path | None
    against: list[str]


def prepare(model: str, suites: list[str], out: str | Path, *, against: list[str] = (), judges: Path | None = None,
            limit: int | None = None, prompt_column: str | None = None, models_dir: Path | None = None) -> ModelEval:
    """Step 1: the model and every --against model as local checkpoints with a chat template, the suites loaded,
    --judges and --out checked; raises InputError (exit 2) before anything is written."""
    from saferounds.eval.suites import load_suites
    from saferounds.pipeline.models import check_chat_model, resolve_source

    if not suites:
        raise InputError("--suite: give at least one suite (KIND:PATH or PATH) to evaluate the model on")
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: expected at least 1 prompt per suite")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file, not a directory; name a directory for the report files")
    if judges is not None and not any((Path(judges) / k / "config.json").is_file() for k in ("refusal", "harm")):
        raise InputError(f"--judges {judges}: no trained judge there (expected refusal/config.json or "
                         "harm/config.json, as `saferounds judges train --out DIR` writes)")
    models_dir = models_dir or default_models_dir()
    name = model_label(model)
    policies = {name: resolve_source(model, models_dir)}
    check_chat_model(policies[name])
    cfg = model_config(policies[name], limit, prompt_column)
    loaded = load_suites(suites, base=Path.cwd(), prompt_column=cfg.eval.prompt_column,
                         limit=cfg.eval.max_prompts_per_suite)
    for a in against or []:
        if Path(a).is_dir() and (Path(a) / "metrics.json").exists():
            missing = [s.name for s in loaded if not (report_answers(Path(a))[1] / f"{s.name}.jsonl").is_file()]
            if missing:
                raise InputError(f"--against {a}: it has no answers to the suite(s) {', '.join(missing)}; compare "
                                 "with a report run on the same --suite")
        else:
            check_chat_model(resolve_source(a, models_dir, "--against"), "--against")
    return ModelEval(name, policies, cfg, loaded, out, Path(judges) if judges else None, list(against or []))


def run(plan: ModelEval, models_dir: Path | None = None, progress: Callable[[str], None] = lambda m: None) -> dict:
    """Steps 2-3: the judges and compared answers into OUT, then evaluate_policies with OUT as the root (no RMs:
    the learned judges and the patterns judge); returns metrics.json's dict."""
    from saferounds.eval.versions import evaluate_policies
    from saferounds.pipeline.models import resolve_source

    models_dir = models_dir or default_models_dir()
    out, policies = plan.out, dict(plan.policies)
    out.mkdir(parents=True, exist_ok=True)
    use_judges(out, plan.judges)
    reports: set[Path] = set()
    for a in plan.against:
        if Path(a).is_dir() and (Path(a) / "metrics.json").exists():
            other, path = against_report(out, Path(a), set(policies)), Path(a)
            reports.add(path)
        else:
            other, path = model_label(a), resolve_source(a, models_dir, "--against")  # resolved in prepare
            other = other if other not in policies else f"{other}-against"
        policies[other] = path
    progress(f"eval: {plan.name} from {policies[plan.name]} on {', '.join(s.name for s in plan.suites)}")
    return evaluate_policies(out, 0, policies, out, config=plan.config, rm_paths={}, suites=plan.suites,
                             load_policy=loader(plan.config, reports), progress=progress, name=plan.name,
                             per_machine=tuple(v for v, p in policies.items() if p not in reports))


def evaluate_model(model: str, suites: list[str], out: str | Path, *, against: list[str] = (),
                   judges: Path | None = None, limit: int | None = None, prompt_column: str | None = None,
                   models_dir: Path | None = None, progress: Callable[[str], None] = lambda m: None) -> dict:
    """prepare + run: metrics.json's dict for `model` on `suites`, compared with `against` (models or report
    directories); the report files go into `out`."""
    plan = prepare(model, suites, out, against=against, judges=judges, limit=limit, prompt_column=prompt_column,
                   models_dir=models_dir)
    return run(plan, models_dir, progress)
