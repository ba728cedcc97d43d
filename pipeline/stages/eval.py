"""The round's `eval` stage, and `evaluate_version` behind `saferounds eval` / `saferounds report`.

  1. the policy of this version (policy/, else the last policy stage's output)
  2. the versions to compare against (eval.compare_against: the previous version and v0 by default)
  3. eval.versions.evaluate_policies: suites -> answers (cached) -> refusal + safety RM (+ LLM judge)
     verdicts, helpfulness RM scores -> metrics.json, report.md, report.html (eval/report.py documents
     the schema), records.json

Output directory: the stage writes ctx.dir/eval/ (versions/vN/eval/ once the version is finished);
the CLI writes WORKSPACE/reports/vN/eval/ (`saferounds eval`) or reports/vN/report/ (`saferounds report`)
because a finished version is never modified.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from saferounds.core import distributed as dist
from saferounds.core.accelerator import to_accelerator
from saferounds.core.errors import InputError
from saferounds.core.io import read_json, read_jsonl
from saferounds.core.versions import version_number
from saferounds.eval.suites import Suite, load_suites
from saferounds.eval.versions import evaluate_policies, generate_answers
from saferounds.pipeline.models import load_policy, to_generation_dtype
from saferounds.pipeline.stages.context import StageContext
from saferounds.pipeline.workspace import Workspace
from saferounds.sampling.curves import max_of_k_curve


def validate(ws: Workspace, n: int, plan: list[str]) -> None:
    """Every eval.suites entry loads (kind known, file there)."""
    cfg = ws.config
    load_suites(suite_specs(cfg, ws.root), base=ws.root, prompt_column=cfg.eval.prompt_column,
                limit=cfg.eval.max_prompts_per_suite)


def run(ctx: StageContext) -> dict:
    """Round stage: evaluate the version's policy against the previous version and v0."""
    ws, cfg = ctx.workspace, ctx.config.eval
    # step 1: this version's policy (policy/ once placed: pipeline.rounds.stage_parent)
    policy = Path(ctx.parent_policy)
    if Path(ctx.dir).resolve() not in policy.resolve().parents:
        raise RuntimeError(f"v{ctx.version}: no policy to evaluate in {ctx.dir}")
    # step 2: the versions to compare against
    compare = compare_targets(ws, ctx.version, cfg.compare_against)
    # step 3: evaluate and report
    samples = ctx.dir / "samples.jsonl"
    metrics = evaluate_version(ws, ctx.version, policy, ctx.dir / "eval", rm_paths=dict(ctx.rm_paths),
                               compare=compare, samples=samples if samples.exists() else None,
                               progress=ctx.progress, distill=ctx.dir / "distill.jsonl",
                               ppo=ppo_block(ctx.dir / "ppo_log.jsonl", ctx.config.ppo))
    return {k: v for k, v in metrics.items() if k not in ("suites", "max_of_k", "ppo")}


# the step log's numbers the report plots (pipeline.training.ppo.step_metrics)
PPO_PLOTTED = ("kl", "score", "score_whitened", "response_length", "refusal_rate", "refusal_rate_safety",
               "refusal_rate_helpful", "share_safety_branch")


def ppo_block(log: Path, ppo_cfg) -> dict | None:
    """metrics.json's `ppo`: per step KL, gated score, response length and the rollouts' refusal rate (from
    the stage's ppo_log.jsonl), ppo.max_kl, ppo.max_refusal_rate, whether the run stopped short of ppo.steps and
    why (ppo_stop.json); None without PPO."""
    if not Path(log).exists():
        return None
    steps = [{"step": r["step"], **{k: r.get(k) for k in PPO_PLOTTED}} for r in read_jsonl(Path(log))]
    from saferounds.pipeline.training.ppo import STOP_FILE

    stop_file = Path(log).parent / STOP_FILE
    stop = read_json(stop_file) if stop_file.exists() else {}
    return {"steps": steps, "planned_steps": ppo_cfg.steps, "max_kl": ppo_cfg.kl_limit, "beta": ppo_cfg.beta,
            "max_refusal_rate": ppo_cfg.max_refusal_rate,
            "stopped_early": bool(steps) and steps[-1]["step"] < ppo_cfg.steps,
            "stop_reason": stop.get("stop_reason"), "stop_message": stop.get("stop_message")}


def evaluate_version(ws, version: int, policy: Path, out_dir: Path, *, rm_paths: dict[str, Path],
                     compare: dict[str, Path] | None = None, suites: list[Suite] | None = None,
                     samples: Path | None = None, progress: Callable[[str], None] = lambda m: None,
                     distill: Path | None = None, ppo: dict | None = None) -> dict:
    """Evaluate ``policy`` as version vN (and the ``compare`` versions' policies on the same prompts);
    write the report into out_dir (with a context-distillation section when ``distill``, the version's
    distill.jsonl, exists; a PPO section when ``ppo``, eval.ppo_block's); return metrics.json's dict."""
    config, root = ws.config, Path(ws.root)
    if suites is None:
        suites = load_suites(suite_specs(config, root), base=root, prompt_column=config.eval.prompt_column,
                             limit=config.eval.max_prompts_per_suite)
    name = f"v{version}"
    policies = {name: Path(policy), **{k: Path(v) for k, v in (compare or {}).items() if k != name}}
    load = lambda path: _load_on_accelerator(path, config.model)  # noqa: E731
    if dist.active():  # every rank generates its share of the missing answers; rank 0 merges them
        generate_answers(root, Path(out_dir), policies, load, suites, config.eval,
                         progress if dist.is_main() else (lambda m: None))
    # rank 0 scores, judges and writes the report (every answer is cached by now)
    return dist.run_on_main(evaluate_policies, root, version, policies, out_dir, config=config, rm_paths=rm_paths,
                            suites=suites, load_policy=load, max_of_k=_max_of_k(samples), progress=progress,
                            distill=read_jsonl(Path(distill)) if distill and Path(distill).exists() else None,
                            selection=_selection_audit(samples), blocks=_blocks(ws, version, ppo))


def _blocks(ws, version: int, ppo: dict | None) -> Callable[[dict], dict]:
    """What metrics.json adds beside the version's own numbers: the gold RM's block and the PPO step log."""
    gold = _gold_hook(ws, version)
    return lambda records: {"gold": gold(records) if gold else None, "ppo": ppo}


def _gold_hook(ws, version: int) -> Callable[[dict], dict | None] | None:
    """The proxy-vs-gold block maker (eval.gold): the newest gold helpfulness RM up to vN scores every
    version's answers to the held-out helpful prompts (role `helpful`); None without a gold RM."""
    from saferounds.pipeline.stages.rm import gold_rm_path, gold_scores

    path = gold_rm_path(ws, version)
    if path is None:
        return None

    def hook(records: dict) -> dict | None:
        from saferounds.eval.gold import proxy_vs_gold

        helpful = {v: [r for r in recs if r["role"] == "helpful"] for v, recs in records.items()}
        flat = [r for recs in helpful.values() for r in recs]
        if not flat:
            return None
        _, scores = gold_scores(ws, version, [r["messages"] for r in flat], [r["response"] for r in flat])
        gold, at = {}, 0
        for v, recs in helpful.items():
            gold[v], at = scores[at: at + len(recs)], at + len(recs)
        manifest = path / "manifest.json"
        held = (read_json(manifest).get("metrics") or {}).get("heldout") if manifest.exists() else None
        heldout = {k: held.get(k) for k in ("accuracy", "ci95", "n")} if held else None
        return proxy_vs_gold(helpful, gold, rm=str(path), heldout=heldout)
    return hook


def _selection_audit(samples: Path | None) -> dict | None:
    """The rs stage's selection audit (selection_audit.json beside the version's samples), for the report."""
    path = Path(samples).parent / "selection_audit.json" if samples else None
    return read_json(path) if path and path.exists() else None


def eval_prompt_texts(ws) -> list[str]:
    """The user turns of every prompt in the workspace's eval suites: what its learned judges must not
    train on (`judges train` drops them, eval.judges.training.train_judges)."""
    config, root = ws.config, Path(ws.root)
    suites = load_suites(suite_specs(config, root), base=root, prompt_column=config.eval.prompt_column)
    return [m["content"] for s in suites for row in s.rows for m in row["messages"] if m.get("role") == "user"]


def train_learned_judges(ws, out_root: Path, kinds: list[str], data_dir: Path | None, *, settings: dict | None = None,
                         keep_eval_prompts: bool = False, progress: Callable[[str], None] = lambda m: None) -> dict:
    """eval.judges.training.train_judges into `out_root` with the user-wide embedding cache; with a workspace
    (`ws` not None), minus its eval prompts unless `keep_eval_prompts`. `judges train` and the smollm2 demo
    train through it. Returns {kind: saved directory}."""
    from saferounds.eval.judges.artifact import user_home
    from saferounds.eval.judges.training import train_judges

    exclude = eval_prompt_texts(ws) if ws is not None and not keep_eval_prompts else []
    return train_judges(out_root, kinds, data_dir, settings=settings, cache_dir=user_home() / "embeddings",
                        exclude_prompts=exclude, progress=progress)


def suite_specs(config, root: Path) -> list[str]:
    """eval.suites, else data.heldout_prompts, else the eval_*.jsonl beside the first prompts file."""
    if config.eval.suites:
        return list(config.eval.suites)
    if config.data.heldout_prompts:
        return [config.data.heldout_prompts]
    for p in config.data.prompts:
        d = (root / p).parent
        if d.is_dir() and any(d.glob("eval_*.jsonl")):
            return [str(d)]
    raise InputError("eval.suites: no evaluation suites configured; set eval.suites (e.g. "
                     "[\"xstest:data/xstest_prompts.csv\", \"unsafe:advbench.csv\"]) or data.heldout_prompts")


def compare_targets(ws, version: int, against: list[str]) -> dict[str, Path]:
    """'previous' / 'v0' / 'vM' -> finished policy paths (missing ones are skipped)."""
    out = {}
    done = set(ws.finished_versions())
    for a in against:
        m = version - 1 if a == "previous" else version_number(a)
        if m < 0 or m == version or m not in done:
            continue
        out[f"v{m}"] = ws.policy_path(m)
    return out


def _load_on_accelerator(path: Path, model_cfg) -> tuple:
    model, tok = load_policy(path, model_cfg)
    return to_accelerator(to_generation_dtype(model, model_cfg)), tok


def _max_of_k(samples: Path | None) -> list | None:
    """The rs stage's max-of-K curve (Fig. 7) for the report, from samples.jsonl."""
    if samples is None or not Path(samples).exists():
        return None
    rows = read_jsonl(Path(samples))
    key = next((k for k in ("gated_logit", "gated_score", "reward") if rows and k in rows[0]), None)
    return max_of_k_curve(rows, key) if key else None
