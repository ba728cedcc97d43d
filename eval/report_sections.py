"""The sections of a version's report, each built once as data (eval.render renders them to markdown and
HTML): overview, headline, judges against human labels, violations by category, suites, RM accuracy
(LLaMA 2 Table 8), the trend over versions, plots and examples."""
from __future__ import annotations

from saferounds.core.versions import version_number
from saferounds.data.risk import RISK_CATEGORIES
from saferounds.eval.render import (Answer, AnswerList, Code, Figures, Note, Paragraph, PromptAnswers, Section, Table,
                                    cut)
from saferounds.reward_models.evaluation import TABLE_8


def pct(r) -> str:
    """A RATE block as "12.5% [lo, hi] (n=8)", a bare fraction as "12.5%", "–" when there is none."""
    if isinstance(r, dict):
        if not r.get("n"):
            return "–"
        lo, hi = r["ci95"]
        return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"
    return "–" if r is None else f"{100 * r:.1f}%"


def num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


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


def examples_table(records: list[dict], compared: dict[str, list[dict]], n: int, version: str = "this"
                   ) -> dict[str, list[dict]]:
    """suite -> [{"id", "role", "category", "prompt", "responses": {version: record}}]."""
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


# --- tables -------------------------------------------------------------------------------------

def violation_caveat(m: dict) -> str:
    """A warning for the headline violation when this version's audit shows the harm verdict it counts is no
    better than chance on the labels (eval.audit: the Rogan-Gladen correction is then not defined); else ""."""
    corrected = ((m.get("audit") or {}).get("corrected") or {}).get("harmful_content")
    uses_harm = (m.get("judges") or {}).get("violation_judge") in ("harm_classifier", "both")
    if uses_harm and corrected and corrected.get("rate") is None:
        return (" - not a measurement on this model: its harm verdict is no better than chance on the audited "
                "answers (see 'Judges on this model's answers')")
    return ""


def headline_rows(m: dict) -> list[tuple[str, str]]:
    s, h = m["safety"], m["helpfulness"]
    rows = [("violation rate (unsafe prompts)", pct(s["violation"]) + violation_caveat(m)),
            ("false refusal, borderline", pct(s["false_refusal"]["borderline"])),
            ("false refusal, helpful", pct(s["false_refusal"]["helpful"])),
            ("mean helpfulness RM score", num(h["mean_score"])),
            ("mean safety RM score (unsafe)", num(s["mean_score"])),
            ("reference overlap (token F1)", num(h["reference_overlap"]))]
    for v, w in sorted(h["win_rate"].items(), key=lambda kv: version_number(kv[0])):
        rows.append((f"helpfulness win rate vs {v}", f"{100 * w['rate']:.1f}% (W{w['wins']}/T{w['ties']}/L{w['losses']})"))
    for v, w in sorted(s.get("win_rate", {}).items(), key=lambda kv: version_number(kv[0])):
        rows.append((f"safety win rate vs {v}", f"{100 * w['rate']:.1f}% (W{w['wins']}/T{w['ties']}/L{w['losses']})"))
    for v, w in sorted(h.get("judge_win_rate", {}).items()):
        rows.append((f"LLM-judge win rate vs {v}", f"{100 * w['rate']:.1f}%"))
    return rows


def _known(r: dict | None) -> float | None:
    return r["rate"] if r and r.get("n") else None


def trend_rows(trend: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["version", "violation %", *[c.replace("_", " ") + " %" for c in RISK_CATEGORIES],
            "false refusal borderline %", "false refusal helpful %", "helpfulness", "win rate vs previous"]
    rows = []
    for m in trend:
        s, h = m["safety"], m["helpfulness"]
        w = h["win_rate"].get(f"v{version_number(m['version']) - 1}")
        rows.append([m["version"], pct(s["violation_rate"]),
                     *[pct(_known(s["by_category"].get(c))) for c in RISK_CATEGORIES],
                     pct(_known(s["false_refusal"]["borderline"])), pct(_known(s["false_refusal"]["helpful"])),
                     num(h["mean_score"]), "–" if w is None else f"{100 * w['rate']:.1f}%"])
    return head, rows


RATING_COLUMNS = TABLE_8[:4]  # LLaMA 2 Table 8, without the "unrated" bin


def rm_accuracy_rows(m: dict) -> tuple[list[str], list[list[str]]]:
    """Held-out RM accuracy with 95% intervals, one row per RM: by origin of the pairs, by rating level as LLaMA 2
    Table 8 lays it out (only where some pair has a level: HH-RLHF and Do-Not-Answer have none), and avg."""
    acc = m.get("rm_accuracy") or {}
    ratings = [c for c in RATING_COLUMNS if any(c in t for t in acc.values())]
    origins = sorted({k for t in acc.values() for k in t if k.startswith("origin:")})
    rows = [[kind, *(pct(t.get(c)) for c in origins + ratings), pct(t.get("avg"))] for kind, t in acc.items()]
    return ["reward model", *(o.split(":", 1)[1] for o in origins), *(c.replace("_", " ") for c in ratings),
            "avg"], rows


def rm_accuracy_section(m: dict) -> Section:
    """The RM table, and a line saying so when no held-out pair has a rating level (Table 8 needs them)."""
    head, rows = rm_accuracy_rows(m)
    levels = () if any(c.replace("_", " ") in head for c in RATING_COLUMNS) else (Paragraph((
        "No held-out pair has a rating level (HH-RLHF and Do-Not-Answer have none), so Table 8's columns "
        "are left out.",)),)
    return Section("Reward-model accuracy on held-out pairs, by origin and by rating (LLaMA 2 Table 8)",
                   (table(head, rows), *levels))


def table(head, rows) -> Table:
    return Table(tuple(head), tuple(tuple(r) for r in rows))


# --- judges -------------------------------------------------------------------------------------

def _heldout_rows(j: dict) -> list[list[str]]:
    rows = []
    for name, by_source in (j.get("refusal_heldout_by_judge") or {}).items():
        for src in ("xstest", "dna"):
            r = by_source.get(src)
            if r and r.get("n"):
                rows.append([f"refusal: {name}", src, str(r["n"]), num(r["agreement"]), ""])
    harm = j.get("harm_classifier")
    if harm:
        for src in ("xstest", "dna", "all"):
            r = harm["heldout"].get(src)
            if r and r.get("n"):
                rows.append(["harm classifier", src, str(r["n"]), num(r["agreement"]), num(r["auc"])])
    return rows


def heldout_models(m: dict) -> dict | None:
    """{data set: [models]} the learned judges were validated on (held out of their training), or None."""
    j = m.get("judges") or {}
    return (j.get("refusal_classifier") or j.get("harm_classifier") or {}).get("heldout_models")


def judge_validation(m: dict) -> tuple[list[str], list[list[str]], list[Paragraph]]:
    """(table head, rows, paragraphs) on the judges: held-out agreement with human labels on models the
    learned judges never saw (from the judge artifacts' config.json), disagreements on this version's
    answers, and fallbacks. The patterns' figures are measured on the same held-out answers."""
    j = m.get("judges", {})
    text = []
    models = heldout_models(m)
    if models:
        text.append(("Held out of training (never seen by the learned judges): " +
                     "; ".join(f"{k}: {', '.join(v)}" for k, v in models.items()) + ".",))
    if j.get("violation_judge"):
        text.append(("Violation judge: ", Code(j["violation_judge"]), " (the harm classifier is independent of "
                     "the safety RM the policy was optimised against; the safety RM is not validated against "
                     "per-response human harm labels)."))
    d = j.get("disagreement") or {}
    a, b = d.get("refusal_patterns_vs_classifier"), d.get("violation_safety_rm_vs_harm_classifier")
    if a and a["n"]:
        text.append((f"Patterns vs refusal classifier disagree on {a['disagree']} of {a['n']} answers.",))
    if b and b["n"]:
        text.append((f"Safety RM vs harm classifier disagree on {b['disagree']} of {b['n']} answers to unsafe "
                     "prompts.",))
    text += [(f"Note: {n}.",) for n in j.get("judge_notes", [])]
    return (["judge", "held-out data", "n", "agreement", "AUC"], _heldout_rows(j),
            [Paragraph(parts) for parts in text])


def generation_failure_line(m: dict) -> str | None:
    g = m.get("generation_failures") or {}
    if not g.get("n"):
        return None
    roles = ", ".join(f"{n} {role}" for role, n in g.get("by_role", {}).items() if n)
    return (f"{g['n']} of {m['n_prompts']} answers were empty or failed ({roles}); they are not refusals and "
            "are excluded from the violation and false-refusal rates, which describe the other answers only.")


# --- sections -----------------------------------------------------------------------------------

def overview(m: dict) -> Section:
    j = m["judges"]
    blocks = [Paragraph((f"{m['n_prompts']} prompts in {len(m['suites'])} suite(s); created {m['created']}.",))]
    if j.get("note"):
        blocks.append(Note("Note", f"{j['note']}."))
    if generation_failure_line(m):
        blocks.append(Note("Generation failures", generation_failure_line(m)))
    blocks.append(Paragraph(("Judges: refusal = ", Code(str(j.get("refusal", "eval.refusal.is_refusal"))),
                             "; safety RM = ", Code(str(j.get("safety_rm") or "none")),
                             f" (unsafe when σ(score) < {j.get('safety_threshold', 0.5)}); LLM judge = ",
                             Code(str(j.get("llm_judge") or "none")), ". A refusal is never a violation.")))
    return Section(f"Safety evaluation of {m['version']}", tuple(blocks), level=1)


def judges_section(m: dict) -> Section:
    head, rows, paragraphs = judge_validation(m)
    return Section("Judges vs human labels", ((table(head, rows),) if rows else ()) + tuple(paragraphs))


def _by_category(title: str, by_category: dict) -> Section:
    return Section(title, (table(["category", "violation"], [[c, pct(r)] for c, r in by_category.items()]),))


def plots_section(plots: dict[str, str]) -> list[Section]:
    return [Section("Plots", (Figures(tuple(plots.items())),))] if plots else []


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


def verdict_class(rec: dict) -> str:
    """The HTML class of an answer's verdict line: violations red, false refusals amber."""
    return "viol" if rec.get("violation") else "fr" if rec.get("false_refusal") else ""


def _answer(version: str, rec: dict | None, n_chars: int) -> Answer | None:
    return None if rec is None else Answer(version, _flags(rec), cut(rec["response"], n_chars), verdict_class(rec))


def examples_sections(examples: dict[str, list[dict]], n_chars: int) -> list[Section]:
    """"Examples", then per suite the picked prompts with every compared version's answer, newest first."""
    out = [Section("Examples")]
    for suite, rows in examples.items():
        versions = sorted({v for r in rows for v in r["responses"]}, key=lambda v: -version_number(v))
        items = []
        for r in rows:
            label = f"[{r['role']}{' / ' + r['category'] if r.get('category') else ''}] {r['id']}"
            answers = tuple(_answer(v, r["responses"].get(v), n_chars) for v in versions)
            items.append(PromptAnswers(label, cut(r["prompt"], n_chars), answers))
        out.append(Section(suite, (AnswerList(("role / category", "prompt", *versions), tuple(items)),), level=3))
    return out


def metric_sections(m: dict, examples: dict, trend: list[dict], plots: dict[str, str], n_chars: int = 600
                    ) -> list[Section]:
    """The report of one version, top to bottom."""
    s = m["safety"]
    out = [overview(m), Section("Headline", (table(["metric", "value"], headline_rows(m)),)), judges_section(m),
           _by_category("Violations by risk category (LLaMA 2)", s["by_category"])]
    if s["by_source_category"]:
        out.append(_by_category("Violations by source category", s["by_source_category"]))
    out.append(Section("Suites", (table(["suite", "n", "violation", "false refusal"],
                                        [[k, v["n"], pct(v["violation"]), pct(v["false_refusal"])]
                                         for k, v in m["suites"].items()]),)))
    if m.get("rm_accuracy"):
        out.append(rm_accuracy_section(m))
    if trend:
        out.append(Section("Trend over versions", (table(*trend_rows(trend)),)))
    return out + plots_section(plots) + examples_sections(examples, n_chars)


# --- proxy vs gold, PPO -------------------------------------------------------------------------

def gold_section(m: dict) -> list[Section]:
    """"Proxy vs gold helpfulness" (Gao et al. 2022): per version the helpfulness RM the rounds optimised and
    the gold RM they never saw, on the held-out helpful prompts, with the gold win rate against v0."""
    g = m.get("gold")
    if not g:
        return []
    base = g["baseline"]
    rows = []
    for v, x in g["versions"].items():
        win = x.get(f"gold_win_rate_vs_{base}")
        rows.append([v, x["n"], num(x["proxy_mean"]), num(x["gold_mean"]),
                     "–" if win is None else f"{100 * win['rate']:.1f}% [{100 * win['ci95'][0]:.1f}, "
                                             f"{100 * win['ci95'][1]:.1f}] ({win['wins']}/{win['ties']}/{win['losses']})"])
    held = g.get("heldout")
    acc = ("its held-out accuracy is not measured" if not held or held.get("accuracy") is None else
           f"its held-out accuracy is {100 * held['accuracy']:.1f}% [{100 * held['ci95'][0]:.1f}, "
           f"{100 * held['ci95'][1]:.1f}] on {held['n']} pairs")
    blocks = [Paragraph((f"Mean raw scores of the helpfulness RM the rounds optimised (proxy) and of the gold "
                         f"helpfulness RM, trained on pairs of other prompts and never used for selection or PPO "
                         f"({acc}), on the held-out helpful prompts. Over-optimisation shows where the proxy "
                         f"rises and the gold does not. Gold win rate vs {base}: ties count half; 95% Wilson "
                         "interval; wins/ties/losses.",)),
              table(["version", "answers", "proxy mean", "gold mean", f"gold win rate vs {base}"], rows)]
    if not g.get("ranks_better_than_chance"):
        blocks.append(Note("Gold RM at chance", "its held-out interval does not exclude 50%, so its scores and win "
                                                "rates say nothing about helpfulness yet"))
    return [Section("Proxy vs gold helpfulness", tuple(blocks))]


def ppo_section(m: dict) -> list[Section]:
    """"PPO": how the run went, step by step (KL, gated score, response length, refusal rate of the rollouts)."""
    p = m.get("ppo")
    if not p or not p.get("steps"):
        return []
    last = p["steps"][-1]
    if not p["stopped_early"]:
        stop = f"ran all {p['planned_steps']} steps"
    elif p.get("stop_reason") == "refusal":
        stop = (f"stopped early after step {last['step']} of {p['planned_steps']}: the rollouts the helpfulness RM "
                f"scored were refused more often than ppo.max_refusal_rate {pct(p.get('max_refusal_rate'))}")
    else:
        stop = (f"stopped early after step {last['step']} of {p['planned_steps']}: the mean KL passed ppo.max_kl "
                f"{p['max_kl']}")
    rows = [[r["step"], num(r["kl"]), num(r["score"]), "–" if r["response_length"] is None else
             f"{r['response_length']:.1f}", pct(r["refusal_rate"]), pct(r.get("refusal_rate_safety")),
             pct(r.get("refusal_rate_helpful"))] for r in p["steps"]]
    return [Section("PPO, step by step", (
        Paragraph((f"PPO on the gated score with the KL penalty β={p['beta']} (LLaMA 2 Eq. 4); it {stop}. KL: nats per "
                   "response to the reference policy; gated score: logit(R_c) before whitening; refusals: the "
                   "refusal patterns on the rollouts (per gate branch). The plots show the same numbers.",)),
        table(["step", "KL", "gated score", "response tokens", "refusals", "safety branch", "helpful branch"], rows)))]

