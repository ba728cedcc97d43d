"""metrics.json, report.md and a self-contained report.html (plots embedded as base64 PNG).

METRICS_SCHEMA_DOC is the documented, stable schema of metrics.json (schema "saferounds.eval/1").
New keys may be added; the documented ones keep their names and meaning.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from saferounds.core.io import atomic_write_text, write_json
from saferounds.core.versions import version_number
from saferounds.eval.evaluate import SCHEMA, check_rates
from saferounds.eval.suites import RISK_CATEGORIES
from saferounds.reward_models.evaluation import TABLE_8

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
                                learned judges (eval/classifiers.py): "refusal_judge", "violation_judge",
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
  safety.mean_score            float|null  mean raw safety-RM score on unsafe prompts
  safety.mean_prob             float|null  mean sigmoid(safety score) on unsafe prompts
  safety.win_rate.<vM>         WIN  by safety-RM score on the unsafe prompts both versions answered
  helpfulness.mean_score       float|null  mean raw helpfulness-RM score on borderline + helpful prompts
  helpfulness.reference_overlap float|null mean token F1 of responses with the reference answers
  helpfulness.win_rate.<vM>    WIN  by helpfulness-RM score on shared borderline + helpful prompts
  helpfulness.judge_win_rate.<vM>  WIN by the LLM judge, asked in both orders (only when configured)
  max_of_k                     [{"k", "max", "median", "mean", "prompts"}]  (only when samples exist)
  rm_accuracy                  {"helpfulness"|"safety": {rating|"avg": RATE}}  (only when the round trained RMs;
                               ratings: significantly_better, better, slightly_better,
                               negligibly_better_or_unsure; held-out pairs of the RM's own source)

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


# --- examples -----------------------------------------------------------------------------------

def pick_examples(records: list[dict], n: int = 10) -> list[dict]:
    """Up to ``n`` records of one suite: violations and false refusals first, then the rest, taken
    round-robin over roles; deterministic (by id)."""
    def interest(r):
        return (0 if (r.get("violation") or r.get("false_refusal")) else 1, str(r["id"]))

    by_role: dict[str, list[dict]] = {}
    for r in sorted(records, key=interest):
        by_role.setdefault(r["role"], []).append(r)
    out, i = [], 0
    while len(out) < min(n, len(records)):
        for role in ("unsafe", "borderline", "helpful"):
            lst = by_role.get(role, [])
            if i < len(lst) and len(out) < n:
                out.append(lst[i])
        i += 1
    return out


def examples_table(records: list[dict], compared: dict[str, list[dict]], n: int) -> dict[str, list[dict]]:
    """suite -> [{"id", "role", "category", "prompt", "responses": {version: record}}]."""
    version = records[0].get("_version", "this") if records else "this"
    lookup = {name: {(r["suite"], r["id"]): r for r in recs} for name, recs in compared.items()}
    out: dict[str, list[dict]] = {}
    for suite in sorted({r["suite"] for r in records}):
        picked = pick_examples([r for r in records if r["suite"] == suite], n)
        rows = []
        for r in picked:
            resp = {version: r}
            for name, lk in lookup.items():
                if (suite, r["id"]) in lk:
                    resp[name] = lk[(suite, r["id"])]
            rows.append({"id": r["id"], "role": r["role"], "category": r.get("category"),
                         "prompt": r["prompt"], "responses": resp})
        out[suite] = rows
    return out


# --- plots --------------------------------------------------------------------------------------

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_plots(trend: list[dict], score_sets: dict[str, dict[str, list[float]]], max_of_k: list | None) -> dict:
    """title -> base64 PNG. trend: metrics dicts of all versions (oldest first); score_sets:
    version -> {"helpfulness": [...], "safety": [...]} raw RM scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    versions = [m["version"] for m in trend]
    if trend:
        cats = list(RISK_CATEGORIES) + (["other"] if any("other" in m["safety"]["by_category"] for m in trend)
                                        else [])
        fig, ax = plt.subplots(figsize=(7, 3.4))
        width = 0.8 / max(1, len(versions))
        for j, m in enumerate(trend):
            vals = [100 * ((m["safety"]["by_category"].get(c) or {}).get("rate") or 0.0) for c in cats]
            errs = []
            for c in cats:
                r = m["safety"]["by_category"].get(c) or {"rate": 0.0, "ci95": [0, 0]}
                lo, hi = r.get("ci95", [0, 0])
                rate = r.get("rate") or 0.0
                errs.append((100 * max(0.0, rate - lo), 100 * max(0.0, hi - rate)) if r.get("n") else (0, 0))
            xs = [i + j * width for i in range(len(cats))]
            ax.bar(xs, vals, width, label=m["version"], yerr=list(zip(*errs)) if errs else None, capsize=2)
        ax.set_xticks([i + width * (len(versions) - 1) / 2 for i in range(len(cats))])
        ax.set_xticklabels([c.replace("_", " ") for c in cats], fontsize=8)
        ax.set_ylabel("violation %")
        ax.set_title("Violation % by risk category (95% Wilson CI)")
        ax.legend(fontsize=7)
        plots["Violation % by category per version"] = _png(fig)

        fig, ax = plt.subplots(figsize=(6, 3))
        for key, label in (("borderline", "borderline prompts"), ("helpful", "helpful prompts")):
            ys = [100 * (m["safety"]["false_refusal"][key]["rate"] or 0.0) for m in trend]
            ax.plot(versions, ys, marker="o", label=label)
        ys = [100 * (m["safety"]["violation_rate"] or 0.0) for m in trend]
        ax.plot(versions, ys, marker="s", linestyle="--", label="violation (unsafe prompts)")
        ax.set_ylabel("%")
        ax.set_ylim(bottom=0)
        ax.set_title("False refusal and violation per version")
        ax.legend(fontsize=7)
        plots["False refusal per version"] = _png(fig)

        pts = [(m["version"], m["safety"]["violation_rate"], m["helpfulness"]["mean_score"]) for m in trend]
        pts = [p for p in pts if p[1] is not None and p[2] is not None]
        if pts:
            fig, ax = plt.subplots(figsize=(5, 3.4))
            ax.plot([100 * p[1] for p in pts], [p[2] for p in pts], marker="o")
            for v, x, y in pts:
                ax.annotate(v, (100 * x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xlabel("violation % (lower is safer)")
            ax.set_ylabel("mean helpfulness RM score")
            ax.set_title("Helpfulness against safety")
            plots["Helpfulness against safety"] = _png(fig)

    if any(s.get("helpfulness") or s.get("safety") for s in score_sets.values()):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for ax, key in zip(axes, ("helpfulness", "safety")):
            for v, s in score_sets.items():
                if s.get(key):
                    ax.hist(s[key], bins=20, alpha=0.5, label=v)
            ax.set_title(f"{key} RM scores ({'unsafe' if key == 'safety' else 'borderline + helpful'} prompts)",
                         fontsize=9)
            ax.legend(fontsize=7)
        plots["Score distributions per version"] = _png(fig)

    if max_of_k:
        fig, ax = plt.subplots(figsize=(5, 3))
        ks = [p["k"] for p in max_of_k]
        ax.plot(ks, [p["max"] for p in max_of_k], marker="o", label="max of k")
        ax.plot(ks, [p["median"] for p in max_of_k], marker="o", label="median of k")
        ax.set_xticks(ks)
        ax.set_xlabel("k samples")
        ax.set_ylabel("reward")
        ax.set_title("Max-of-K (LLaMA 2 Fig. 7)")
        ax.legend(fontsize=7)
        plots["Max-of-K curve"] = _png(fig)
    return plots


# --- text renderings ----------------------------------------------------------------------------

def _pct(r) -> str:
    if isinstance(r, dict):
        if not r.get("n"):
            return "–"
        lo, hi = r["ci95"]
        return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"
    return "–" if r is None else f"{100 * r:.1f}%"


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _cut(text: str, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + " …"


def headline_rows(m: dict) -> list[tuple[str, str]]:
    s, h = m["safety"], m["helpfulness"]
    rows = [("violation rate (unsafe prompts)", _pct(s["violation"])),
            ("false refusal, borderline", _pct(s["false_refusal"]["borderline"])),
            ("false refusal, helpful", _pct(s["false_refusal"]["helpful"])),
            ("mean helpfulness RM score", _num(h["mean_score"])),
            ("mean safety RM score (unsafe)", _num(s["mean_score"])),
            ("reference overlap (token F1)", _num(h["reference_overlap"]))]
    for v, w in sorted(h["win_rate"].items(), key=lambda kv: version_number(kv[0])):
        rows.append((f"helpfulness win rate vs {v}", f"{100 * w['rate']:.1f}% (W{w['wins']}/T{w['ties']}/L{w['losses']})"))
    for v, w in sorted(s.get("win_rate", {}).items(), key=lambda kv: version_number(kv[0])):
        rows.append((f"safety win rate vs {v}", f"{100 * w['rate']:.1f}% (W{w['wins']}/T{w['ties']}/L{w['losses']})"))
    for v, w in sorted(h.get("judge_win_rate", {}).items()):
        rows.append((f"LLM-judge win rate vs {v}", f"{100 * w['rate']:.1f}%"))
    return rows


def trend_rows(trend: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["version", "violation %", *[c.replace("_", " ") + " %" for c in RISK_CATEGORIES],
            "false refusal borderline %", "false refusal helpful %", "helpfulness", "win rate vs previous"]
    rows = []
    for m in trend:
        s, h = m["safety"], m["helpfulness"]
        prev = f"v{version_number(m['version']) - 1}"
        w = h["win_rate"].get(prev)
        rows.append([m["version"], _pct(s["violation_rate"]),
                     *[_pct((s["by_category"].get(c) or {}).get("rate") if (s["by_category"].get(c) or {}).get("n")
                            else None) for c in RISK_CATEGORIES],
                     _pct(s["false_refusal"]["borderline"]["rate"] if s["false_refusal"]["borderline"]["n"] else None),
                     _pct(s["false_refusal"]["helpful"]["rate"] if s["false_refusal"]["helpful"]["n"] else None),
                     _num(h["mean_score"]), "–" if w is None else f"{100 * w['rate']:.1f}%"])
    return head, rows


RATING_COLUMNS = TABLE_8[:4]  # LLaMA 2 Table 8, without the "unrated" bin


def rm_accuracy_rows(m: dict) -> tuple[list[str], list[list[str]]]:
    """Held-out RM accuracy per rating level, as LLaMA 2 Table 8 lays it out (one row per RM)."""
    rows = []
    for kind, by_rating in (m.get("rm_accuracy") or {}).items():
        cells = [f"{100 * by_rating[c]['rate']:.1f}% (n={by_rating[c]['n']})" if c in by_rating else "–"
                 for c in RATING_COLUMNS]
        total = by_rating.get("avg")
        rows.append([kind, *cells, f"{100 * total['rate']:.1f}% (n={total['n']})" if total else "–"])
    return ["reward model", *(c.replace("_", " ") for c in RATING_COLUMNS), "avg"], rows


def _md_table(head, rows) -> str:
    esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return "\n".join(["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(map(esc, r)) + " |" for r in rows]])


def _flags(rec: dict) -> str:
    out = ["refusal" if rec.get("refusal") else "answer"]
    if rec.get("violation"):
        out.append("VIOLATION")
    if rec.get("false_refusal"):
        out.append("FALSE REFUSAL")
    if rec.get("safety_prob") is not None:
        out.append(f"p_safe={rec['safety_prob']:.2f}")
    if rec.get("helpfulness_score") is not None:
        out.append(f"help={rec['helpfulness_score']:.2f}")
    return ", ".join(out)


def judge_validation(m: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(table head, rows, sentences) on the judges: held-out agreement with human labels on models the
    learned judges never saw (from the judge artifacts' config.json), disagreements on this version's
    answers, and fallbacks. The patterns' figures are measured on the same held-out answers."""
    j = m.get("judges", {})
    rows = []
    ref = j.get("refusal_classifier")
    by_judge = j.get("refusal_heldout_by_judge") or {}
    for name, table in by_judge.items():
        for src in ("xstest", "dna"):
            r = table.get(src)
            if r and r.get("n"):
                rows.append([f"refusal: {name}", src, str(r["n"]), _num(r["agreement"]), ""])
    harm = j.get("harm_classifier")
    if harm:
        for src in ("xstest", "dna", "all"):
            r = harm["heldout"].get(src)
            if r and r.get("n"):
                rows.append(["harm classifier", src, str(r["n"]), _num(r["agreement"]), _num(r["auc"])])
    text = []
    models = (ref or harm or {}).get("heldout_models")
    if models:
        text.append("Held out of training (never seen by the learned judges): " +
                    "; ".join(f"{k}: {', '.join(v)}" for k, v in models.items()) + ".")
    if j.get("violation_judge"):
        text.append(f"Violation judge: `{j['violation_judge']}` (the harm classifier is independent of the safety RM "
                    "the policy was optimised against; the safety RM is not validated against per-response "
                    "human harm labels).")
    d = j.get("disagreement") or {}
    a, b = d.get("refusal_patterns_vs_classifier"), d.get("violation_safety_rm_vs_harm_classifier")
    if a and a["n"]:
        text.append(f"Patterns vs refusal classifier disagree on {a['disagree']} of {a['n']} answers.")
    if b and b["n"]:
        text.append(f"Safety RM vs harm classifier disagree on {b['disagree']} of {b['n']} answers to unsafe prompts.")
    text += [f"Note: {n}." for n in j.get("judge_notes", [])]
    return ["judge", "held-out data", "n", "agreement", "AUC"], rows, text


def generation_failure_line(m: dict) -> str | None:
    g = m.get("generation_failures") or {}
    if not g.get("n"):
        return None
    roles = ", ".join(f"{n} {role}" for role, n in g.get("by_role", {}).items() if n)
    return (f"{g['n']} of {m['n_prompts']} answers were empty or failed ({roles}); they are not refusals and "
            "are excluded from the violation and false-refusal rates, which describe the other answers only.")


def render_markdown(m: dict, examples: dict, trend: list[dict], cut: int = 600) -> str:
    s = m["safety"]
    lines = [f"# Safety evaluation of {m['version']}", "",
             f"{m['n_prompts']} prompts in {len(m['suites'])} suite(s); created {m['created']}.", ""]
    if m["judges"].get("note"):
        lines += [f"> **Note:** {m['judges']['note']}.", ""]
    if generation_failure_line(m):
        lines += [f"> **Generation failures:** {generation_failure_line(m)}", ""]
    j = m["judges"]
    lines += [f"Judges: refusal = `{j.get('refusal', 'eval.refusal.is_refusal')}`; safety RM = "
              f"`{j.get('safety_rm') or 'none'}` (unsafe when σ(score) < {j.get('safety_threshold', 0.5)}); "
              f"LLM judge = `{j.get('llm_judge') or 'none'}`. A refusal is never a violation.", "",
              "## Headline", "", _md_table(["metric", "value"], headline_rows(m)), ""]
    vh, vr, vt = judge_validation(m)
    lines += ["## Judges vs human labels", "", *([_md_table(vh, vr), ""] if vr else []), *vt, ""]
    lines += ["## Violations by risk category (LLaMA 2)", "",
              _md_table(["category", "violation"], [[c, _pct(r)] for c, r in s["by_category"].items()]), ""]
    if s["by_source_category"]:
        lines += ["## Violations by source category", "",
                  _md_table(["category", "violation"], [[c, _pct(r)] for c, r in s["by_source_category"].items()]), ""]
    lines += ["## Suites", "", _md_table(["suite", "n", "violation", "false refusal"],
                                         [[k, v["n"], _pct(v["violation"]), _pct(v["false_refusal"])]
                                          for k, v in m["suites"].items()]), ""]
    if m.get("rm_accuracy"):
        lines += ["## Reward-model accuracy on held-out pairs, by rating (LLaMA 2 Table 8)", "",
                  _md_table(*rm_accuracy_rows(m)), ""]
    if trend:
        lines += ["## Trend over versions", "", _md_table(*trend_rows(trend)), ""]
    lines += ["## Examples", ""]
    for suite, rows in examples.items():
        lines += [f"### {suite}", ""]
        for r in rows:
            lines += [f"**[{r['role']}{' / ' + r['category'] if r.get('category') else ''}] {r['id']}** — "
                      f"{_cut(r['prompt'], cut)}", ""]
            for v, rec in r["responses"].items():
                lines += [f"- *{v}* ({_flags(rec)}): {_cut(rec['response'], cut)}".replace("\n", " ")]
            lines += [""]
    return "\n".join(lines) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#1b1f24}table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #d0d7de;
padding:4px 8px;font-size:13px;vertical-align:top}th{background:#f6f8fa}.note{background:#fff8c5;padding:8px;
border:1px solid #d4a72c}.viol{color:#b00020;font-weight:600}.fr{color:#9a6700;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:6px 0}pre{white-space:pre-wrap;margin:0;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}figcaption{font-size:12px;color:#57606a}"""


def _html_table(head, rows, raw=False) -> str:
    e = (lambda x: str(x)) if raw else (lambda x: html.escape(str(x)))
    return ("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def render_html(m: dict, examples: dict, trend: list[dict], plots: dict, cut: int = 600) -> str:
    s = m["safety"]
    j = m["judges"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>saferounds {html.escape(m['version'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Safety evaluation of {html.escape(m['version'])}</h1>",
             f"<p>{m['n_prompts']} prompts in {len(m['suites'])} suite(s); created {html.escape(m['created'])}.</p>"]
    if j.get("note"):
        parts.append(f"<p class='note'><b>Note:</b> {html.escape(j['note'])}.</p>")
    if generation_failure_line(m):
        parts.append(f"<p class='note'><b>Generation failures:</b> {html.escape(generation_failure_line(m))}</p>")
    parts.append(f"<p>Judges: refusal = <code>{html.escape(str(j.get('refusal', 'eval.refusal.is_refusal')))}</code>; "
                 f"safety RM = <code>{html.escape(str(j.get('safety_rm') or 'none'))}</code> (unsafe when "
                 f"σ(score) &lt; {j.get('safety_threshold', 0.5)}); LLM judge = "
                 f"<code>{html.escape(str(j.get('llm_judge') or 'none'))}</code>. A refusal is never a violation.</p>")
    vh, vr, vt = judge_validation(m)
    parts += ["<h2>Judges vs human labels</h2>", *([_html_table(vh, vr)] if vr else []),
              *(f"<p>{html.escape(t)}</p>" for t in vt)]
    parts += ["<h2>Headline</h2>", _html_table(["metric", "value"], headline_rows(m)),
              "<h2>Violations by risk category (LLaMA 2)</h2>",
              _html_table(["category", "violation"], [[c, _pct(r)] for c, r in s["by_category"].items()])]
    if s["by_source_category"]:
        parts += ["<h2>Violations by source category</h2>",
                  _html_table(["category", "violation"], [[c, _pct(r)] for c, r in s["by_source_category"].items()])]
    parts += ["<h2>Suites</h2>", _html_table(["suite", "n", "violation", "false refusal"],
                                             [[k, v["n"], _pct(v["violation"]), _pct(v["false_refusal"])]
                                              for k, v in m["suites"].items()])]
    if m.get("rm_accuracy"):
        parts += ["<h2>Reward-model accuracy on held-out pairs, by rating (LLaMA 2 Table 8)</h2>",
                  _html_table(*rm_accuracy_rows(m))]
    if trend:
        parts += ["<h2>Trend over versions</h2>", _html_table(*trend_rows(trend))]
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for title, b64 in plots.items():
            parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(title)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Examples</h2>")
    for suite, rows in examples.items():
        parts.append(f"<h3>{html.escape(suite)}</h3>")
        versions = sorted({v for r in rows for v in r["responses"]}, key=lambda v: -version_number(v))
        table = []
        for r in rows:
            cells = [html.escape(r["role"] + (f" / {r['category']}" if r.get("category") else "")),
                     f"<pre>{html.escape(_cut(r['prompt'], cut))}</pre>"]
            for v in versions:
                rec = r["responses"].get(v)
                if rec is None:
                    cells.append("–")
                    continue
                cls = "viol" if rec.get("violation") else "fr" if rec.get("false_refusal") else ""
                cells.append(f"<div class='{cls}'>{html.escape(_flags(rec))}</div>"
                             f"<pre>{html.escape(_cut(rec['response'], cut))}</pre>")
            table.append(cells)
        parts.append(_html_table(["role / category", "prompt", *versions], table, raw=True))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, metrics: dict, records: list[dict], *,
                 compared: dict[str, list[dict]] | None = None, trend: list[dict] | None = None,
                 examples_per_suite: int = 10, max_response_chars: int = 600,
                 distill: list[dict] | None = None) -> dict[str, Path]:
    """Write metrics.json, report.md and report.html into out_dir; returns their paths. `distill`: the rows of
    the version's distill.jsonl, reported in a section of their own (add_distill_section)."""
    validate_metrics(metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compared = compared or {}
    trend = sorted([t for t in (trend or []) if t["version"] != metrics["version"]] + [metrics],
                   key=lambda t: version_number(t["version"]))
    for r in records:
        r["_version"] = metrics["version"]
    examples = examples_table(records, compared, examples_per_suite)
    for r in records:
        r.pop("_version", None)
    score_sets = {}
    for v, recs in [(metrics["version"], records), *compared.items()]:  # the scores the means use
        score_sets[v] = {"helpfulness": [r["helpfulness_score"] for r in recs
                                         if r["role"] != "unsafe" and r.get("helpfulness_score") is not None],
                         "safety": [r["safety_score"] for r in recs
                                    if r["role"] == "unsafe" and r.get("safety_score") is not None]}
    plots = make_plots(trend, score_sets, metrics.get("max_of_k"))
    paths = {"metrics": out_dir / "metrics.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    write_json(paths["metrics"], metrics)
    from saferounds.eval import side_by_side

    pairs = side_by_side.pick(records, compared["v0"]) if "v0" in compared else []
    v, cut = metrics["version"], max_response_chars
    atomic_write_text(paths["markdown"], render_markdown(metrics, examples, trend, cut)
                      + side_by_side.markdown(pairs, "v0", v, cut))
    atomic_write_text(paths["html"], render_html(metrics, examples, trend, plots, cut).replace(
        "</body></html>", side_by_side.html_section(pairs, "v0", v, cut) + "</body></html>"))
    if distill:
        add_distill_section(paths, distill, max_response_chars)
    return paths


# --- safety context distillation (LLaMA 2 Sec. 4.2.4): the version's distill.jsonl ---------------------------

def distill_summary(rows: list[dict], n_examples: int = 5) -> dict:
    """The distill stage's pairs at a glance: counts, share kept, mean safety-RM scores, and the rejected
    distillations with the largest loss first (LLaMA 2 Table 40: the preprompt made the answer worse)."""
    kept = [r for r in rows if r["kept"]]

    def mean(values):
        return sum(values) / len(values) if values else None

    rejected = sorted((r for r in rows if not r["kept"]), key=lambda r: (r["score_pre"] - r["score_plain"],
                                                                          str(r["prompt_id"])))
    return {"pairs": len(rows), "kept": len(kept), "kept_share": len(kept) / len(rows) if rows else None,
            "margin": rows[0].get("margin") if rows else None,
            "mean_score_plain": mean([r["score_plain"] for r in rows]),
            "mean_score_pre": mean([r["score_pre"] for r in rows]),
            "by_preprompt": {k: [sum(r["kept"] for r in rows if r["preprompt"] == k),
                                 sum(r["preprompt"] == k for r in rows)]
                             for k in sorted({r["preprompt"] for r in rows})},
            "rejected_examples": rejected[:n_examples]}


def distill_plot(rows: list[dict]) -> str:
    """LLaMA 2 Fig. 16 analogue: safety-RM scores of the plain answers against the preprompted (distilled) ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain, pre = [r["score_plain"] for r in rows], [r["score_pre"] for r in rows]
    lo, hi = min(plain + pre), max(plain + pre)
    bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 20
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(plain, bins=bins, alpha=0.55, label="plain answer (no preprompt)")
    ax.hist(pre, bins=bins, alpha=0.55, label="with safety preprompt (distilled)")
    ax.set_xlabel("safety RM score")
    ax.set_ylabel("prompts")
    ax.set_title("Context distillation: safety RM scores (LLaMA 2 Fig. 16)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def _distill_headline(s: dict) -> list[list[str]]:
    return [["pairs (adversarial prompts)", str(s["pairs"])],
            ["kept (preprompted answer scored higher by > margin)", f"{s['kept']} ({100 * s['kept_share']:.0f}%)"
             if s["kept_share"] is not None else "0"],
            ["margin", _num(s["margin"])],
            ["mean safety RM score, plain", _num(s["mean_score_plain"])],
            ["mean safety RM score, with preprompt", _num(s["mean_score_pre"])],
            *[[f"kept / pairs, {k} preprompt", f"{a} / {b}"] for k, (a, b) in s["by_preprompt"].items()]]


def render_distill_markdown(rows: list[dict], cut: int = 600) -> str:
    s = distill_summary(rows)
    lines = ["## Safety context distillation (LLaMA 2 Sec. 4.2.4)", "",
             "Each adversarial prompt was answered with and without a safety preprompt; the preprompted answer is "
             "kept for fine-tuning (without the preprompt) only where the safety RM scores it above the plain "
             "answer by more than the margin. The score histogram is in report.html (the Fig. 16 analogue).", "",
             _md_table(["", "value"], _distill_headline(s)), "",
             "### Rejected distillations (the preprompt did not make the answer safer; LLaMA 2 Table 40)", ""]
    if not s["rejected_examples"]:
        lines += ["None: every preprompted answer was kept.", ""]
    for r in s["rejected_examples"]:
        prompt = " ".join(m["content"] for m in r["messages"] if m["role"] == "user")
        lines += [f"**{r['prompt_id']}** ({r.get('category') or 'no category'}, {r['preprompt']} preprompt) — "
                  f"{_cut(prompt, cut)}".replace("\n", " "), "",
                  f"- *plain* (safety {r['score_plain']:.3f}): {_cut(r['answer_plain'], cut)}".replace("\n", " "),
                  f"- *with preprompt* (safety {r['score_pre']:.3f}): {_cut(r['answer_pre'], cut)}".replace("\n", " "),
                  ""]
    return "\n".join(lines) + "\n"


def render_distill_html(rows: list[dict], cut: int = 600) -> str:
    s = distill_summary(rows)
    parts = ["<h2>Safety context distillation (LLaMA 2 Sec. 4.2.4)</h2>",
             "<p>Each adversarial prompt was answered with and without a safety preprompt; the preprompted answer "
             "is kept for fine-tuning (without the preprompt) only where the safety RM scores it above the plain "
             "answer by more than the margin.</p>",
             _html_table(["", "value"], _distill_headline(s)),
             f"<figure><img alt='distillation scores' src='data:image/png;base64,{distill_plot(rows)}'>"
             "<figcaption>Safety RM scores with and without the preprompt (LLaMA 2 Fig. 16 analogue)</figcaption>"
             "</figure>",
             "<h3>Rejected distillations (LLaMA 2 Table 40)</h3>"]
    if not s["rejected_examples"]:
        parts.append("<p>None: every preprompted answer was kept.</p>")
    else:
        def cell(label: str, text: str, cls: str = "") -> str:
            return f"<div class='{cls}'>{html.escape(label)}</div><pre>{html.escape(_cut(text, cut))}</pre>"

        table = [[html.escape(f"{r['prompt_id']} / {r.get('category') or 'no category'} / {r['preprompt']}"),
                  cell("", " ".join(m["content"] for m in r["messages"] if m["role"] == "user")),
                  cell(f"safety {r['score_plain']:.3f}", r["answer_plain"]),
                  cell(f"safety {r['score_pre']:.3f}", r["answer_pre"], "fr")]
                 for r in s["rejected_examples"]]
        parts.append(_html_table(["prompt / category / preprompt", "prompt", "plain answer", "with preprompt"],
                                 table, raw=True))
    return "\n".join(parts)


def add_distill_section(paths: dict[str, Path], rows: list[dict], cut: int = 600) -> None:
    """Append the distillation section to a written report.md and report.html (before </body>)."""
    md, page = paths["markdown"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    atomic_write_text(paths["markdown"], md + "\n" + render_distill_markdown(rows, cut))
    body = render_distill_html(rows, cut)
    atomic_write_text(paths["html"], page.replace("</body></html>", body + "\n</body></html>")
                      if "</body></html>" in page else page + body)
