"""The round's `eval` stage, and `evaluate_version` behind `saferounds eval` / `saferounds report`.

One readable job: suites -> answers of this version and of the compared versions (deterministic,
cached per version and suite) -> refusal + safety RM (+ LLM judge) verdicts, helpfulness RM scores
-> metrics.json, report.md, report.html (eval/report.py documents the schema).

Output directory: the stage writes ctx.dir/eval/ (versions/vN/eval/ once the version is finished);
the CLI writes WORKSPACE/reports/vN/ because a finished version is never modified. Generations of
version M for suite S are cached in <out>/generations/vM/S.jsonl, and every such file anywhere in
the workspace is read back, so nothing is generated twice.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

from core.accelerator import to_accelerator
from core.errors import InputError
from core.versions import version_number
from eval.evaluate import judge_records, summarise
from eval.generate import cached_generate, generation_settings
from eval.report import write_report
from eval.suites import Suite, load_suites
from pipeline.models import load_policy


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


def cache_files(root: Path, version: str, suite: str) -> list[Path]:
    pats = [f"versions/*/eval/generations/{version}/{suite}.jsonl",
            f"versions/.*.partial/eval/generations/{version}/{suite}.jsonl",
            f"reports/*/generations/{version}/{suite}.jsonl"]
    return sorted({p for pat in pats for p in root.glob(pat)})


def _policy_loader(path: Path, model_cfg) -> Callable[[], tuple]:
    def load():
        model, tok = load_policy(path, model_cfg)
        return to_accelerator(model), tok
    return load


def answers(root: Path, out_dir: Path, version: str, policy: Path, model_cfg, suites: list[Suite], cfg,
            progress: Callable[[str], None]) -> dict[str, list[str]]:
    """suite name -> responses of ``version`` (cached; the model is loaded only if something is missing)."""
    settings = generation_settings(cfg)
    loaded: dict = {}
    load = _policy_loader(policy, model_cfg)

    def once():
        if "m" not in loaded:
            progress(f"eval: loading {version} policy from {policy}")
            loaded["m"] = load()
        return loaded["m"]

    out = {}
    for s in suites:
        cache = out_dir / "generations" / version / f"{s.name}.jsonl"
        resp, new = cached_generate(once, s.rows, settings, cache, extra_caches=cache_files(root, version, s.name),
                                    batch_size=cfg.batch_size,
                                    progress=lambda d, n, s=s: progress(f"eval: {version} {s.name} {d}/{n}"))
        out[s.name] = resp
        if new:
            progress(f"eval: {version} {s.name}: generated {new}, cached {len(resp) - new}")
    loaded.clear()
    gc.collect()
    return out


def rm_scores(rm_path: Path | None, model_cfg, pairs: list[tuple[list, str]], batch_size: int) -> list[float] | None:
    if rm_path is None or not pairs:
        return None
    from reward_models.modeling import load_reward_model
    from reward_models.scoring import score

    model, tok = load_reward_model(rm_path, model_cfg)
    to_accelerator(model)
    out = score(model, tok, [p for p, _ in pairs], [r for _, r in pairs], batch_size=batch_size)
    del model
    gc.collect()
    from core.finite import check_scores

    check_scores(out, "eval", f"the RM {Path(rm_path).parent.name}/{Path(rm_path).name} score")  # NaN is never "safe"
    return out


def rm_accuracy(rm_paths: dict[str, Path], version: int) -> dict | None:
    """Held-out accuracy per rating of the RMs trained in this version (from their manifests)."""
    import json

    from eval.metrics import rate_with_ci

    out = {}
    for kind, path in rm_paths.items():
        manifest = Path(path) / "manifest.json"
        if Path(path).name != f"v{version}" or not manifest.exists():
            continue  # the round reused an earlier version's RM: its accuracy is in that report
        held = json.loads(manifest.read_text(encoding="utf-8")).get("metrics", {}).get("heldout") or {}
        table = {r: rate_with_ci(round(v["accuracy"] * v["n"]), v["n"]) for r, v in held.get("by_rating", {}).items()}
        if held.get("n"):
            table["avg"] = rate_with_ci(round(held["accuracy"] * held["n"]), held["n"])
        if table:
            out[kind] = table
    return out or None


def evaluate_version(ws, version: int, policy: Path, out_dir: Path, *, rm_paths: dict[str, Path],
                     compare: dict[str, Path] | None = None, suites: list[Suite] | None = None,
                     samples: Path | None = None, progress: Callable[[str], None] = lambda m: None) -> dict:
    """Evaluate ``policy`` as version vN (and the ``compare`` versions' policies on the same prompts);
    write the report into out_dir; return metrics.json's dict."""
    config = ws.config
    cfg = config.eval
    root = Path(ws.root)
    if suites is None:
        suites = load_suites(suite_specs(config, root), base=root, prompt_column=cfg.prompt_column,
                             limit=cfg.max_prompts_per_suite)
    name = f"v{version}"
    policies = {name: Path(policy), **{k: Path(v) for k, v in (compare or {}).items() if k != name}}
    responses = {v: answers(root, out_dir, v, p, config.model, suites, cfg, progress) for v, p in policies.items()}

    # score every version's answers with THIS round's RMs, so win rates compare like with like
    flat = [(v, s.name, i) for v in policies for s in suites for i in range(len(s.rows))]
    by_name = {s.name: s for s in suites}
    pairs = [(by_name[s].rows[i]["messages"], responses[v][s][i]) for v, s, i in flat]
    scores = {}
    for kind in ("helpfulness", "safety"):
        progress(f"eval: scoring with the {kind} RM")
        scores[kind] = rm_scores(rm_paths.get(kind), config.model, pairs, cfg.batch_size)

    llm = None
    if cfg.use_llm_judge:
        llm = _llm_safety(config, out_dir, flat, by_name, responses, progress)

    records: dict[str, list[dict]] = {v: [] for v in policies}
    offset = 0
    for v in policies:
        for s in suites:
            n = len(s.rows)
            sl = slice(offset, offset + n)
            records[v] += judge_records(
                s.name, s.rows, responses[v][s.name],
                helpfulness=None if scores["helpfulness"] is None else scores["helpfulness"][sl],
                safety=None if scores["safety"] is None else scores["safety"][sl],
                llm_safety=None if llm is None else llm[sl], threshold=cfg.safety_threshold)
            offset += n

    compared = {v: r for v, r in records.items() if v != name}
    judges = {"refusal": "eval.refusal.is_refusal",
              "helpfulness_rm": str(rm_paths["helpfulness"]) if rm_paths.get("helpfulness") else None,
              "safety_rm": str(rm_paths["safety"]) if rm_paths.get("safety") else None,
              "safety_threshold": cfg.safety_threshold,
              "llm_judge": config.judge.model if cfg.use_llm_judge else None}
    judge_win = _llm_win_rate(config, out_dir, records[name], compared, progress) if cfg.use_llm_judge else None
    metrics = summarise(name, records[name], compared=compared, judges=judges,
                        suites={s.name: {"path": s.path} for s in suites}, judge_win_rate=judge_win,
                        max_of_k=_max_of_k(samples), rm_accuracy=rm_accuracy(rm_paths, version))
    # the compared versions judged by the same judges in this run (like-for-like headline figures)
    metrics["compared"] = {v: {k: summarise(v, recs, judges=judges)[k] for k in ("safety", "helpfulness")}
                           for v, recs in compared.items()}
    trend = load_trend(root, exclude=name)
    have = {t["version"] for t in trend}
    for v, recs in compared.items():  # a compared version never evaluated on its own: from this run
        if v not in have:
            trend.append(summarise(v, recs, judges={**judges, "computed_in": f"report of {name}"}))
    write_report(out_dir, metrics, records[name], compared=compared, trend=trend,
                 examples_per_suite=cfg.examples_per_suite, max_response_chars=cfg.max_response_chars)
    _write_records(out_dir, records[name])
    return metrics


def _write_records(out_dir: Path, records: list[dict]) -> None:
    from core.io import write_json

    write_json(out_dir / "records.json", records)


def _max_of_k(samples: Path | None) -> list | None:
    if samples is None or not Path(samples).exists():
        return None
    from core.io import read_jsonl
    from sampling.curves import max_of_k_curve

    rows = read_jsonl(Path(samples))
    key = next((k for k in ("gated_logit", "gated_score", "reward") if rows and k in rows[0]), None)
    return max_of_k_curve(rows, key) if key else None


def _llm_safety(config, out_dir, flat, by_name, responses, progress) -> list[float | None]:
    from reward_models.feedback.judges import make_judge
    from reward_models.feedback.labeling import judge_scores

    idx = [j for j, (v, s, i) in enumerate(flat) if by_name[s].rows[i]["role"] == "unsafe"]
    prompts = [{**by_name[flat[j][1]].rows[flat[j][2]], "is_safety": True} for j in idx]
    resp = [responses[flat[j][0]][flat[j][1]][flat[j][2]] for j in idx]
    progress(f"eval: LLM judge on {len(idx)} unsafe answers")
    with make_judge(config.judge, cache_path=out_dir / "work" / "judge.sqlite") as judge:
        got = judge_scores(judge, prompts, resp)
    out: list[float | None] = [None] * len(flat)
    for j, g in zip(idx, got):
        out[j] = g
    return out


def _llm_win_rate(config, out_dir, mine: list[dict], compared: dict[str, list[dict]], progress) -> dict:
    """Pairwise LLM-judge win rate on shared borderline/helpful prompts, asked in both orders
    (reward_models.feedback.labeling.label_pair); orders that disagree ("unsure") count as ties."""
    from reward_models.feedback.judges import make_judge
    from reward_models.feedback.labeling import label_pair

    out = {}
    with make_judge(config.judge, cache_path=out_dir / "work" / "judge.sqlite") as judge:
        for v, theirs in compared.items():
            lookup = {(r["suite"], r["id"]): r for r in theirs}
            jobs = [(r, lookup[(r["suite"], r["id"])]) for r in mine
                    if r["role"] != "unsafe" and (r["suite"], r["id"]) in lookup]
            progress(f"eval: LLM judge win rate against {v} on {len(jobs)} prompts")
            wins = ties = n = 0
            results = judge.map(lambda ab: label_pair(judge, {"id": ab[0]["id"], "messages": ab[0]["messages"],
                                                              "is_safety": False},
                                                      ab[0]["response"], ab[1]["response"]), jobs)
            for (a, b), res in zip(jobs, results):
                if "record" not in res:
                    continue
                n += 1
                if res["record"]["rating"] == "unsure" or a["response"] == b["response"]:
                    ties += 1
                elif res["record"]["chosen"] == a["response"]:
                    wins += 1
            if n:
                out[v] = {"rate": (wins + 0.5 * ties) / n, "wins": wins, "ties": ties, "losses": n - wins - ties,
                          "n": n}
    return out


def load_trend(root: Path, exclude: str | None = None) -> list[dict]:
    """metrics.json of every evaluated version (versions/vN/eval, else reports/vN), oldest first."""
    import json

    found: dict[str, dict] = {}
    for pat in ("versions/v*/eval/metrics.json", "reports/v*/metrics.json"):
        for p in sorted(Path(root).glob(pat)):
            try:
                m = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            v = m.get("version")
            if v and v != exclude and v not in found:
                found[v] = m
    return sorted(found.values(), key=lambda m: version_number(m["version"]))


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


def run(ctx) -> dict:
    """Round stage: evaluate the version's policy against the previous version and v0."""
    ws, cfg = ctx.workspace, ctx.config.eval
    policy = ctx.policy if Path(ctx.policy).exists() else next(
        (ctx.dir / p for p in ("ppo_policy", "rs_policy") if (ctx.dir / p).exists()), None)
    if policy is None:
        raise RuntimeError(f"v{ctx.version}: no policy to evaluate in {ctx.dir}")
    samples = ctx.dir / "samples.jsonl"
    metrics = evaluate_version(ws, ctx.version, policy, ctx.dir / "eval", rm_paths=dict(ctx.rm_paths),
                               compare=compare_targets(ws, ctx.version, cfg.compare_against),
                               samples=samples if samples.exists() else None, progress=ctx.progress)
    return {k: v for k, v in metrics.items() if k not in ("suites", "max_of_k")}
