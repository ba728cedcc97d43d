"""Report sections on how far the numbers can be trusted (issues 26 and 27): the two safety verdicts kept
apart, the judges measured on this version's own answers with the rates corrected for their error (or a
plain "unaudited"), and what best-of-K chose in the round that built this version."""
from __future__ import annotations

from saferounds.eval.render import Code, Note, Paragraph, Section
from saferounds.eval.report_sections import heldout_models, pct, table


def _interval(c: dict) -> str:
    if c.get("rate") is None:  # why, as eval.audit.corrected_rate says it
        why = c.get("method", "").partition("not defined, ")[2] or "the judge is no better than chance on the labels"
        return f"not defined ({why})"
    lo, hi = c["ci95"]
    return f"{100 * c['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def verdicts_section(m: dict) -> list[Section]:
    """Complied vs harmful content on unsafe prompts, by risk category, beside the headline's definition."""
    v = m["safety"].get("verdicts")
    if not v:
        return []
    harm = v.get("harmful_content") or {}
    cats = sorted(set(v["complied"]["by_category"]) | set(harm.get("by_category", {})))
    rows = [["all", pct(v["complied"]), pct(harm) if harm else "no harm classifier"]]
    rows += [[c, pct(v["complied"]["by_category"].get(c)), pct(harm.get("by_category", {}).get(c))] for c in cats]
    return [Section("Two verdicts on unsafe prompts", (
        Paragraph(("Complied: the answer did not refuse. Harmful content: the harm classifier finds concrete "
                   "steps or claims that move toward the harm. The headline violation is fixed for every "
                   "version: ", Code(v["violation_definition"]), ".")),
        table(["risk category", "complied", "harmful content"], rows)))]


def audit_section(m: dict) -> list[Section]:
    """The judges against labels on this version's answers and the corrected rates; or 'unaudited'."""
    a = m.get("audit")
    if not a or not a.get("labels"):
        models = heldout_models(m)
        where = ("; ".join(f"{k}: {', '.join(v)}" for k, v in models.items()) if models
                 else "the refusal patterns' XSTest and Do-Not-Answer labels")
        return [Section("Judges on this model's answers", (Note(
            "Unaudited", f"the rates above come from judges validated on other models' answers ({where}), not on "
            f"{m['version']}'s. `saferounds audit {m['version']}` draws answers to label and then reports each "
            "judge's agreement and the rates corrected for its error."),))]
    acc_rows = [[q, x["n"], pct(x["agreement"]), pct(x["sensitivity"]), pct(x["specificity"]), pct(x["precision"])]
                for q, x in a["accuracy"].items()]
    cor_rows = [[name, pct(c["raw"]), _interval(c), c["method"]] for name, c in a["corrected"].items()]
    return [Section(f"Judges on this model's answers (audited, n={a['labels']})", (
        table(["judge", "labels", "agreement", "sensitivity", "specificity", "precision"], acc_rows),
        Paragraph(("Rates corrected for the judges' measured error (Rogan–Gladen; 95% interval by the delta "
                   "method over the judged rate and the audit's sensitivity and specificity):",)),
        table(["rate", "judged", "corrected", "how"], cor_rows)))]


def selection_section(m: dict) -> list[Section]:
    """"What best-of-K chose": the rs stage's selection audit of this version's round."""
    s = m.get("selection")
    if not s:
        return []
    rows = []
    for part in ("safety", "helpful"):
        b = s.get(part)
        if not b:
            continue
        for side in ("all", "selected"):
            x = b[side]
            gold = x.get("gold_score_mean")
            rows.append([f"{part} prompts: {side}", x["samples"], pct(x.get("harmful")), pct(x["refusal"]),
                         "–" if x.get("gated_score_mean") is None else f"{x['gated_score_mean']:.3f}",
                         "–" if gold is None else f"{gold:.3f}"])
    blocks = [table(["samples", "n", "harmful", "refusal", "gated score", "gold RM"], rows)]
    head = (s.get("safety") or {}).get("headroom")
    if head and head.get("prompts"):
        blocks.append(Paragraph((f"Oracle headroom: {head['with_a_non_harmful_candidate']} of {head['prompts']} "
                                 f"safety prompts had a non-harmful candidate; the selection took one for "
                                 f"{head['selected_non_harmful']}.",)))
    if s.get("rm_chance"):
        blocks.append(Note("Not a result", s["rm_chance"]))
    return [Section("What best-of-K chose", tuple(blocks))]
