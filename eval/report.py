"""metrics.json, report.md and a self-contained report.html (plots embedded as base64 PNG).

The report is a list of sections (eval.report_sections, eval.side_by_side, eval.report_distill), built once
and rendered by eval.render to markdown and to HTML; each file is written once, atomically.

METRICS_SCHEMA_DOC is the documented, stable schema of metrics.json (schema "saferounds.eval/1").
New keys may be added; the documented ones keep their names and meaning.
"""
from __future__ import annotations

from pathlib import Path

from saferounds.core.io import atomic_write_text, write_json
from saferounds.core.versions import version_number
from saferounds.eval import side_by_side
from saferounds.eval.evaluate import SCHEMA, check_rates
from saferounds.eval.render import Section, to_html, to_markdown
from saferounds.eval.report_distill import DistillRow, distill_sections
from saferounds.eval.report_gauge import audit_section, selection_section, verdicts_section
from saferounds.eval.report_plots import make_plots
from saferounds.eval.report_sections import examples_table, gold_section, metric_sections, ppo_section

METRICS_SCHEMA_DOC = """\
metrics.json  (schema "saferounds.eval/1"; every *rate* is a fraction in [0, 1], null when n = 0)

  schema                       "saferounds.eval/1"
  version                      "vN", the evaluated version
  created                      ISO time
  n_prompts                    int, prompts evaluated over all suites
  generation_failures          {"n", "rate", "by_role"}: empty or failed answers; never counted as
                               refusals, and left out of every violation / false-refusal denominator
  judges                       {"refusal": "eval.refusal.is_refusal", "safety_rm": path|null,
                                "helpfulness_rm": path|null, "safety_threshold": float,
                                "llm_judge": model|null, "note": str (only when no safety judge),
                                learned judges (eval/judges/): "refusal_judge", "violation_judge",
                                "refusal_classifier"/"harm_classifier": {path, backbone, threshold, heldout,
                                heldout_models}|null, "refusal_heldout_by_judge", "judge_notes": [str],
                                "disagreement": {"refusal_patterns_vs_classifier",
                                "violation_safety_rm_vs_harm_classifier": {"n", "disagree"}}}
  suites.<name>                {"path", "n", "violation": RATE|null, "false_refusal": RATE|null}
  safety.violation_rate        float|null  violations / unsafe prompts
  safety.violation             RATE
  safety.false_refusal_rate    float|null  refusals / (borderline + helpful prompts)
  safety.false_refusal         {"all": RATE, "borderline": RATE, "helpful": RATE}
  safety.by_category           {"illicit_and_criminal"|"hateful_and_harmful"|"unqualified_advice"
                                |"other": RATE}  violation rate per LLaMA 2 risk category
                                (the three are always present)
  safety.by_source_category    {source category name: RATE}  (e.g. XSTest type, DNA types_of_harm)
  safety.refusal_rate_unsafe   float|null
  safety.verdicts              {"violation_definition": str, "complied": RATE + {"by_category"},
                                "harmful_content": (RATE + {"by_category"})|null}  the two verdicts apart
                                (unsafe prompts: did not refuse / the harm classifier flags concrete harm)
  safety.mean_score            float|null  mean raw safety-RM score on unsafe prompts
  safety.mean_prob             float|null  mean sigmoid(safety score) on unsafe prompts
  safety.win_rate.<vM>         WIN  by safety-RM score on the unsafe prompts both versions answered
  helpfulness.mean_score       float|null  mean raw helpfulness-RM score on borderline + helpful prompts
  helpfulness.reference_overlap float|null mean token F1 of responses with the reference answers
  helpfulness.win_rate.<vM>    WIN  by helpfulness-RM score on shared borderline + helpful prompts
  helpfulness.judge_win_rate.<vM>  WIN by the LLM judge, asked in both orders (only when configured)
  max_of_k                     [{"k", "max", "median", "mean", "prompts"}]  (only when samples exist)
  audit                        null (unaudited) | reports/vN/audit's summary (eval/audit_labels.py):
                               {"labels": n, "accuracy": {"refusal"|"harmful": {n, tp, fp, tn, fn, agreement,
                               sensitivity, specificity, precision: RATE}}, "corrected": {"complied"|
                               "harmful_content"|"false_refusal": {"raw": RATE, "rate", "ci95", "method"}}}
  selection                    the rs stage's selection_audit.json (sampling/selection_audit.py), when the
                               version was built by rs
  gold                         the gold helpfulness RM (reward_models.gold; never used for selection or PPO) on
                               the held-out helpful prompts (eval/gold.py): {"gold_rm", "baseline": "v0",
                               "heldout": {accuracy, ci95, n}|null, "ranks_better_than_chance", "versions":
                               {vM: {"n", "proxy_mean", "gold_mean", "gold_win_rate_vs_v0": WIN + "ci95"}}}
                               (only when a gold RM exists)
  ppo                          {"steps": [{"step", "kl", "score", "response_length", "refusal_rate", ...}],
                               "planned_steps", "max_kl", "beta", "stopped_early"}  (only for a PPO version)
  rm_accuracy                  {"helpfulness"|"safety": {rating|"origin:NAME"|"avg": RATE}}  (only when the round
                               trained RMs; ratings: significantly_better, better, slightly_better,
                               negligibly_better_or_unsure; origins: hh_helpful, hh_harmless, do_not_answer;
                               held-out pairs of the RM's own source)

  RATE = {"rate": float, "n": int, "count": int, "ci95": [lo, hi]}   (Wilson score interval)
  WIN  = {"rate": float, "wins": int, "ties": int, "losses": int, "n": int}   ties count half
"""

REQUIRED = ("schema", "version", "safety.violation_rate", "safety.false_refusal_rate", "safety.by_category",
            "helpfulness.mean_score", "helpfulness.win_rate")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(dotted)
        d = d[part]
    return d


def validate_metrics(m: dict) -> None:
    """Raise ValueError when metrics.json breaks the documented schema."""
    missing = []
    for k in REQUIRED:
        try:
            _get(m, k)
        except KeyError:
            missing.append(k)
    bad = check_rates(m)
    if missing or bad or m.get("schema") != SCHEMA:
        raise ValueError(f"metrics.json breaks schema {SCHEMA}: missing {missing}, rates out of [0, 1] {bad}")


def render_markdown(m: dict, examples: dict, trend: list[dict], cut: int = 600) -> str:
    """The metrics' sections as markdown (no plots, no side-by-side, no distillation)."""
    return to_markdown(metric_sections(m, examples, trend, {}, cut))


def render_html(m: dict, examples: dict, trend: list[dict], plots: dict, cut: int = 600) -> str:
    return to_html(f"saferounds {m['version']}", metric_sections(m, examples, trend, plots, cut))


def _score_sets(versions: list[tuple[str, list[dict]]]) -> dict[str, dict[str, list[float]]]:
    """version -> the raw RM scores the means use: helpfulness on benign prompts, safety on unsafe ones."""
    return {v: {"helpfulness": [r["helpfulness_score"] for r in recs
                                if r["role"] != "unsafe" and r.get("helpfulness_score") is not None],
                "safety": [r["safety_score"] for r in recs
                           if r["role"] == "unsafe" and r.get("safety_score") is not None]}
            for v, recs in versions}


def report_sections(metrics: dict, records: list[dict], compared: dict[str, list[dict]], trend: list[dict],
                    examples_per_suite: int, cut: int, distill: list[DistillRow] | None) -> list[Section]:
    """Every section of the version's report, in order: the metrics, v0 side by side, the distillation."""
    v = metrics["version"]
    examples = examples_table(records, compared, examples_per_suite, version=v)
    plots = make_plots(trend, _score_sets([(v, records), *compared.items()]), metrics.get("max_of_k"),
                       metrics.get("ppo"))
    pairs = side_by_side.pick(records, compared["v0"]) if "v0" in compared else []
    metric = metric_sections(metrics, examples, trend, plots, cut)
    gauge = (verdicts_section(metrics) + audit_section(metrics) + selection_section(metrics) + gold_section(metrics)
             + ppo_section(metrics))
    return (metric[:3] + gauge + metric[3:] + side_by_side.section(pairs, "v0", v, cut)
            + (distill_sections(distill, cut) if distill else []))


def write_report(out_dir: str | Path, metrics: dict, records: list[dict], *,
                 compared: dict[str, list[dict]] | None = None, trend: list[dict] | None = None,
                 examples_per_suite: int = 10, max_response_chars: int = 600,
                 distill: list[DistillRow] | None = None) -> dict[str, Path]:
    """Write metrics.json, report.md and report.html into out_dir; returns their paths. `distill`: the rows of
    the version's distill.jsonl, reported in a section of their own (eval.report_distill)."""
    validate_metrics(metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trend = sorted([t for t in (trend or []) if t["version"] != metrics["version"]] + [metrics],
                   key=lambda t: version_number(t["version"]))
    sections = report_sections(metrics, records, compared or {}, trend, examples_per_suite, max_response_chars,
                               distill)
    paths = {"metrics": out_dir / "metrics.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    write_json(paths["metrics"], metrics)
    atomic_write_text(paths["markdown"], to_markdown(sections))
    atomic_write_text(paths["html"], to_html(f"saferounds {metrics['version']}", sections))
    return paths
