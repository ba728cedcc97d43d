"""Evaluating policies as versions: answers (deterministic, cached per version and suite), RM and LLM-judge
verdicts, comparisons with earlier versions, the trend, and the report (LLaMA 2 Sec. 4.4).

The caller supplies how a policy is loaded (`load_policy(path) -> (model, tokenizer)`, placed on the
accelerator), so this package needs nothing of the pipeline. Generations of version M for suite S are
cached in <out>/generations/vM/S.jsonl, and every such file anywhere in the workspace is read back, so
nothing is generated twice.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Callable

from saferounds.core.accelerator import to_accelerator
from saferounds.core.io import write_json
from saferounds.core.progress import current, label
from saferounds.core.records import EvalRecord
from saferounds.core.versions import version_number
from saferounds.eval.answer_cache import for_model
from saferounds.eval.audit_labels import load_labels
from saferounds.eval.audit_labels import summarise as audit_summary
from saferounds.eval.evaluate import judge_records, prompt_text, summarise
from saferounds.eval.generate import cached_generate, cached_generate_sharded, generation_settings
from saferounds.eval.metrics import rate_with_ci, win_rate_of
from saferounds.eval.report import write_report
from saferounds.eval.suites import Suite

Progress = Callable[[str], None]


def evaluate_policies(root: Path, version: int, policies: dict[str, Path], out_dir: Path, *, config,
                      rm_paths: dict[str, Path], suites: list[Suite], load_policy: Callable[[Path], tuple],
                      max_of_k: list | None = None, progress: Progress = lambda m: None,
                      distill: list[dict] | None = None, selection: dict | None = None,
                      blocks: Callable[[dict], dict] | None = None, name: str | None = None, per_machine=("v0",)):
    """Evaluate policies["vN"] (version N) and the compared versions' policies on the same prompts;
    write metrics.json, report.md, report.html and records.json into out_dir; return metrics.json's dict.
    `config`: the whole config; `blocks(records by version)`: more blocks; `name`: the key when not vN (all_answers)."""
    cfg, name = config.eval, name or f"v{version}"
    # 1. answers of every version, from the caches or generated
    responses = all_answers(root, out_dir, policies, load_policy, suites, config, progress, per_machine)
    # 2. score every version's answers with THIS round's RMs, so win rates compare like with like
    flat = [(v, s.name, i) for v in policies for s in suites for i in range(len(s.rows))]
    by_name = {s.name: s for s in suites}
    pairs = [(by_name[s].rows[i]["messages"], responses[v][s][i]) for v, s, i in flat]
    # each RM scores only the rows its metrics read: safety on unsafe prompts (violations), helpfulness
    # on the others (win rate, mean score); half the scoring of a real model's eval
    roles = [by_name[s].rows[i]["role"] for _, s, i in flat]
    uses = {"helpfulness": lambda role: role != "unsafe", "safety": lambda role: role == "unsafe"}
    scores = {}
    current().stage("eval", total=sum(uses[k](role) for k in ("helpfulness", "safety") if k in rm_paths
                                      for role in roles), unit="answers")
    for kind in ("helpfulness", "safety"):
        idx = [j for j, role in enumerate(roles) if uses[kind](role)]
        progress(f"eval: scoring {len(idx)} answers with the {kind} RM")
        got = rm_scores(rm_paths.get(kind), config.model, [pairs[j] for j in idx], cfg.batch_size,
                        config.reward_models.max_length)
        if got is None:
            scores[kind] = None if rm_paths.get(kind) is None else [None] * len(pairs)
            continue
        scores[kind] = [None] * len(pairs)
        for j, v in zip(idx, got):
            scores[kind][j] = v
    llm = llm_safety(config.judge, out_dir, flat, by_name, responses, progress) if cfg.use_llm_judge else None

    # 3. verdicts per answer (the learned refusal and harm judges, when trained, beside the patterns and RMs)
    learned, judge_info = learned_verdicts(root, cfg, pairs, scores["safety"] is not None, progress, config.judge)
    use_rm = not (cfg.violation_judge == "harm_classifier" and judge_info.get("harm_classifier"))
    records: dict[str, list[EvalRecord]] = {v: [] for v in policies}
    offset = 0
    for v in policies:
        for s in suites:
            sl = slice(offset, offset + len(s.rows))
            records[v] += judge_records(
                s.name, s.rows, responses[v][s.name],
                helpfulness=None if scores["helpfulness"] is None else scores["helpfulness"][sl],
                safety=None if scores["safety"] is None else scores["safety"][sl],
                llm_safety=None if llm is None else llm[sl], threshold=cfg.safety_threshold,
                learned=None if learned is None else learned[sl], use_safety_rm=use_rm)
            offset += len(s.rows)

    # 4. metrics, with the compared versions judged by the same judges in this run
    compared = {v: r for v, r in records.items() if v != name}
    judges = {"refusal": "eval.refusal.is_refusal",  # replaced by judge_info's when learned judges ran
              "helpfulness_rm": str(rm_paths["helpfulness"]) if rm_paths.get("helpfulness") else None,
              "safety_rm": str(rm_paths["safety"]) if rm_paths.get("safety") else None,
              "safety_threshold": cfg.safety_threshold,
              "llm_judge": config.judge.model if cfg.use_llm_judge else None, **judge_info}
    judge_win = llm_win_rate(config.judge, out_dir, records[name], compared, progress) if cfg.use_llm_judge else None
    metrics = summarise(name, records[name], compared=compared, judges=judges,
                        suites={s.name: {"path": s.path} for s in suites}, judge_win_rate=judge_win,
                        max_of_k=max_of_k, rm_accuracy=rm_accuracy(rm_paths, version))
    _complete(metrics, root, version, records[name], compared, judges, selection, blocks and blocks(records))

    # 5. the trend over versions, and the report
    trend = load_trend(root, exclude=name)
    have = {t["version"] for t in trend}
    for v, recs in compared.items():  # a compared version never evaluated on its own: from this run
        if v not in have:
            trend.append(summarise(v, recs, judges={**judges, "computed_in": f"report of {name}"}))
    write_report(out_dir, metrics, records[name], compared=compared, trend=trend,
                 examples_per_suite=cfg.examples_per_suite, max_response_chars=cfg.max_response_chars,
                 distill=distill)
    write_json(out_dir / "records.json", records[name])
    if compared:  # the compared versions' per-prompt verdicts and scores, for like-for-like comparisons
        write_json(out_dir / "compared_records.json", compared)
    current().done(headline_summary(metrics, version=label().split(" ")[0] != name))
    return metrics


def _complete(metrics: dict, root: Path, version: int, records: list[dict], compared: dict[str, list[dict]],
              judges: dict, selection: dict | None, blocks: dict | None = None) -> None:
    """What metrics.json adds to the version's own summary: the compared versions' safety and helpfulness by
    the same judges, the audit of the judges on this version's answers (`saferounds audit vN --labels`), and
    the rs stage's selection audit; the caller's `blocks` (the gold RM's proxy-vs-gold block, eval.gold; the
    PPO step log)."""
    metrics["compared"] = {v: {k: summarise(v, recs, judges=judges)[k] for k in ("safety", "helpfulness")}
                           for v, recs in compared.items()}
    labels = load_labels(root, version)
    metrics["audit"] = audit_summary(records, labels) if labels else None
    if selection:
        metrics["selection"] = selection
    metrics.update({k: v for k, v in (blocks or {}).items() if v is not None})


def headline_summary(metrics: dict, version: bool = True) -> str:
    """One line for the progress view: violation %, false refusal %, mean helpfulness score; led by the
    version unless the progress label already names it ("v1 eval  violation ...", not "v1 eval  v1: ...")."""
    s, h = metrics["safety"], metrics["helpfulness"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    helpful = h.get("mean_score")
    return ((f"{metrics['version']}: " if version else "") + f"violation {pct(s.get('violation_rate'))}, false refusal "
            f"{pct(s.get('false_refusal_rate'))}, helpfulness {'n/a' if helpful is None else f'{helpful:.3f}'}")


def learned_verdicts(root: Path, cfg, pairs: list, have_rm: bool, progress: Progress,
                     judge_cfg=None) -> tuple[list[dict] | None, dict]:
    """The learned judges' verdicts on every (prompt, response) (eval.refusal_judge, eval.violation_judge),
    and what the report says about them: which judges, their held-out agreement, fallbacks."""
    from saferounds.eval.judges.judging import load_judges

    need_harm = cfg.violation_judge != "safety_rm"
    judges = load_judges(root, cfg.refusal_judge, need_harm=need_harm, judge_cfg=judge_cfg)
    info = {"refusal": cfg.refusal_judge if judges.refusal else "eval.refusal.is_refusal (patterns)",
            "violation_judge": cfg.violation_judge, **judges.describe()}
    notes = list(judges.notes)
    if cfg.violation_judge == "harm_classifier" and judges.harm is None:
        notes.append("eval.violation_judge is harm_classifier but none is trained: the safety RM judged violations")
    if cfg.violation_judge != "harm_classifier" and not have_rm:
        notes.append("no safety RM: violations were judged without it")
    if notes:
        info["judge_notes"] = notes
    if judges.refusal is None and judges.harm is None:
        return None, info
    progress(f"eval: learned judges on {len(pairs)} answers")
    verdicts = judges.judge([prompt_text(m) for m, _ in pairs], [r for _, r in pairs])
    late = [n for n in judges.notes if n not in notes]  # judging itself can add notes (unreadable LLM replies)
    if late:
        info["judge_notes"] = notes + late
    return verdicts, info


def cache_files(root: Path, version: str, suite: str) -> list[Path]:
    """Every cached generation file of `version` on `suite` in the workspace."""
    pats = [f"versions/*/eval/generations/{version}/{suite}.jsonl",
            f"versions/.*.partial/eval/generations/{version}/{suite}.jsonl",
            f"reports/*/generations/{version}/{suite}.jsonl",  # before eval and report had their own dirs
            f"reports/*/*/generations/{version}/{suite}.jsonl"]
    return sorted({p for pat in pats for p in root.glob(pat)})


def all_answers(root: Path, out_dir: Path, policies: dict[str, Path], load_policy: Callable[[Path], tuple],
                suites: list[Suite], config, progress: Progress, per_machine=("v0",)) -> dict[str, dict]:
    """version -> suite -> answers (`answers` per policy); the `per_machine` policies (v0; `eval --model`'s, named
    by `name`) also read and fill the per-machine cache (eval.answer_cache)."""
    return {v: answers(root, out_dir, v, p, load_policy, suites, config.eval, progress,
                       machine=for_model(p, config.model) if v in per_machine else None)
            for v, p in policies.items()}


def answers(root: Path, out_dir: Path, version: str, policy: Path, load_policy: Callable[[Path], tuple],
            suites: list[Suite], cfg, progress: Progress, machine=None) -> dict[str, list[str]]:
    """suite name -> responses of ``version`` (cached; the model is loaded only if something is missing);
    ``machine``: the policy's eval.answer_cache.AnswerCache, read before and filled after."""
    settings = generation_settings(cfg)
    loaded: dict = {}

    def once():
        if "model" not in loaded:
            progress(f"eval: loading {version} policy from {policy}")
            loaded["model"] = load_policy(policy)
        return loaded["model"]

    out = {}
    bar = current()  # one line per version: its answers over all suites
    bar.stage(f"eval answers {version}", total=sum(len(s.rows) for s in suites), unit="prompts")
    generated = 0
    for s in suites:
        cache = out_dir / "generations" / version / f"{s.name}.jsonl"
        seen = [0]

        def report(d, n, s=s, seen=seen):
            progress(f"eval: {version} {s.name} {d}/{n}")
            bar.advance(max(0, d - seen[0]))
            seen[0] = max(seen[0], d)
        resp, new = cached_generate(once, s.rows, settings, cache, extra_caches=cache_files(root, version, s.name),
                                    batch_size=cfg.batch_size, progress=report, decoder=getattr(cfg, "greedy_decoder", "shared-prefix"),
                                    machine=machine.suite(s, settings) if machine else None)
        out[s.name] = resp
        generated += new
        if new:
            progress(f"eval: {version} {s.name}: generated {new}, cached {len(resp) - new}")
    bar.done(f"{sum(len(r) for r in out.values())} prompts ({generated} generated, the rest cached)")
    loaded.clear()
    gc.collect()
    return out


def generate_answers(root: Path, out_dir: Path, policies: dict[str, Path], load_policy: Callable[[Path], tuple],
                     suites: list[Suite], cfg, progress: Progress = lambda m: None) -> None:
    """Every rank of a launch calls this before rank 0 runs evaluate_policies: the missing answers of
    every version are generated in shares (eval.generate.cached_generate_sharded) and merged into the
    caches by rank 0, so evaluate_policies then finds them all cached."""
    settings = generation_settings(cfg)
    for version, policy in policies.items():
        loaded: dict = {}

        def once(version=version, policy=policy):
            if "model" not in loaded:
                progress(f"eval: loading {version} policy from {policy}")
                loaded["model"] = load_policy(policy)
            return loaded["model"]

        for s in suites:
            cache = out_dir / "generations" / version / f"{s.name}.jsonl"
            cached_generate_sharded(once, s.rows, settings, cache, extra_caches=cache_files(root, version, s.name),
                                    batch_size=cfg.batch_size, decoder=getattr(cfg, "greedy_decoder", "shared-prefix"),
                                    progress=lambda d, n, s=s, v=version: progress(f"eval: {v} {s.name} {d}/{n}"))
        loaded.clear()
        gc.collect()


def rm_scores(rm_path: Path | None, model_cfg, pairs: list[tuple[list, str]], batch_size: int,
              max_length: int = 512) -> list[float] | None:
    """Raw scores of one RM on (prompt messages, response) pairs; None without an RM. `max_length` is the
    RM's training length (reward_models.max_length): it scores what it was trained to read, the end of the
    conversation when longer (left truncation), as rs and PPO do."""
    if rm_path is None or not pairs:
        return None
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    model, tok = load_reward_model(rm_path, model_cfg)
    to_accelerator(model)
    out = score(model, tok, [p for p, _ in pairs], [r for _, r in pairs], batch_size=batch_size,
                max_length=max_length, progress=lambda n: current().advance(n))
    del model
    gc.collect()
    from saferounds.core.finite import check_scores

    check_scores(out, "eval", f"the RM {Path(rm_path).parent.name}/{Path(rm_path).name} score")  # NaN is never "safe"
    return out


def rm_accuracy(rm_paths: dict[str, Path], version: int) -> dict | None:
    """Held-out accuracy per rating (Table 8) and per origin of the RMs trained in this version (from their
    manifests: the block the rm stage scored once per RM)."""
    out = {}
    for kind, path in rm_paths.items():
        manifest = Path(path) / "manifest.json"
        if Path(path).name != f"v{version}" or not manifest.exists():
            continue  # the round reused an earlier version's RM: its accuracy is in that report
        held = json.loads(manifest.read_text(encoding="utf-8")).get("metrics", {}).get("heldout") or {}
        table = {r: rate_with_ci(round(v["accuracy"] * v["n"]), v["n"]) for r, v in held.get("by_rating", {}).items()}
        table |= {f"origin:{o}": rate_with_ci(round(v["accuracy"] * v["n"]), v["n"])
                  for o, v in (held.get("by_origin") or {}).items()}  # HH helpful, HH harmless, Do-Not-Answer
        if held.get("n"):
            table["avg"] = rate_with_ci(round(held["accuracy"] * held["n"]), held["n"])
        if table:
            out[kind] = table
    return out or None


def llm_safety(judge_cfg, out_dir: Path, flat, by_name, responses, progress: Progress) -> list[float | None]:
    """The LLM judge's safety score of every answer to an unsafe prompt (None elsewhere), in `flat` order."""
    from saferounds.reward_models.feedback.judges import make_judge
    from saferounds.reward_models.feedback.labeling import judge_scores

    idx = [j for j, (v, s, i) in enumerate(flat) if by_name[s].rows[i]["role"] == "unsafe"]
    prompts = [{**by_name[flat[j][1]].rows[flat[j][2]], "is_safety": True} for j in idx]
    resp = [responses[flat[j][0]][flat[j][1]][flat[j][2]] for j in idx]
    progress(f"eval: LLM judge on {len(idx)} unsafe answers")
    with make_judge(judge_cfg, cache_path=out_dir / "work" / "judge.sqlite") as judge:
        got = judge_scores(judge, prompts, resp)
    out: list[float | None] = [None] * len(flat)
    for j, g in zip(idx, got):
        out[j] = g
    return out


def llm_win_rate(judge_cfg, out_dir: Path, mine: list[EvalRecord], compared: dict[str, list[EvalRecord]],
                 progress: Progress) -> dict:
    """Pairwise LLM-judge win rate on shared borderline/helpful prompts, asked in both orders
    (reward_models.feedback.labeling.label_pair); orders that disagree ("unsure") count as ties."""
    from saferounds.reward_models.feedback.judges import make_judge
    from saferounds.reward_models.feedback.labeling import label_pair

    out = {}
    with make_judge(judge_cfg, cache_path=out_dir / "work" / "judge.sqlite") as judge:
        for v, theirs in compared.items():
            lookup = {(r["suite"], r["id"]): r for r in theirs}
            jobs = [(r, lookup[(r["suite"], r["id"])]) for r in mine
                    if r["role"] != "unsafe" and (r["suite"], r["id"]) in lookup]
            progress(f"eval: LLM judge win rate against {v} on {len(jobs)} prompts")
            wins = ties = losses = 0
            results = judge.map(lambda ab: label_pair(judge, {"id": ab[0]["id"], "messages": ab[0]["messages"],
                                                              "is_safety": False},
                                                      ab[0]["response"], ab[1]["response"]), jobs)
            for (a, b), res in zip(jobs, results):
                if "record" not in res:
                    continue
                if res["record"]["rating"] == "unsure" or a["response"] == b["response"]:
                    ties += 1
                elif res["record"]["chosen"] == a["response"]:
                    wins += 1
                else:
                    losses += 1
            if wins + ties + losses:
                out[v] = win_rate_of(wins, ties, losses)
    return out


def report_with_audit(root: Path, version: int, eval_dir: Path, out_dir: Path, cfg,
                      distill: list[dict] | None = None) -> dict[str, Path]:
    """Version `version`'s finished evaluation (eval_dir's metrics.json, records.json, compared_records.json)
    reported again into out_dir with the audit block of its current labels (reports/vN/audit/labels.jsonl):
    the judges' accuracy on this model's answers and the corrected rates. Nothing is generated or judged again;
    eval_dir (inside a finished version) is only read. `cfg`: the eval section (examples, response length)."""
    eval_dir = Path(eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    records = json.loads((eval_dir / "records.json").read_text(encoding="utf-8"))
    compared_file = eval_dir / "compared_records.json"
    compared = json.loads(compared_file.read_text(encoding="utf-8")) if compared_file.exists() else {}
    labels = load_labels(root, version)
    metrics["audit"] = audit_summary(records, labels) if labels else None
    return write_report(out_dir, metrics, records, compared=compared, trend=load_trend(root, exclude=metrics["version"]),
                        examples_per_suite=cfg.examples_per_suite, max_response_chars=cfg.max_response_chars,
                        distill=distill)


def load_trend(root: Path, exclude: str | None = None) -> list[dict]:
    """metrics.json of every evaluated version (versions/vN/eval, else reports/vN/eval, reports/vN/report),
    oldest first."""
    found: dict[str, dict] = {}
    for pat in ("versions/v*/eval/metrics.json", "reports/v*/eval/metrics.json", "reports/v*/report/metrics.json",
                "reports/v*/metrics.json"):
        for p in sorted(Path(root).glob(pat)):
            try:
                m = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            v = m.get("version")
            if v and v != exclude and v not in found:
                found[v] = m
    return sorted(found.values(), key=lambda m: version_number(m["version"]))
