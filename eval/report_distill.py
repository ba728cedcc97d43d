"""The report's section on safety context distillation (LLaMA 2 Sec. 4.2.4): the version's distill.jsonl."""
from __future__ import annotations

from typing import TypedDict

from saferounds.eval.render import Answer, AnswerList, Figures, Paragraph, PromptAnswers, Section, cut
from saferounds.eval.report_plots import distill_plot
from saferounds.eval.report_sections import num, table


class DistillRow(TypedDict, total=False):
    """One distill.jsonl row (pipeline.stages.distill.pair_row): the pair, both safety-RM scores, the gate."""
    prompt_id: str
    messages: list[dict]
    category: str | None
    preprompt: str
    answer_plain: str
    answer_pre: str
    score_plain: float
    score_pre: float
    margin: float
    kept: bool


class DistillSummary(TypedDict):
    pairs: int
    kept: int
    kept_share: float | None
    margin: float | None
    mean_score_plain: float | None
    mean_score_pre: float | None
    by_preprompt: dict[str, list[int]]  # preprompt -> [kept, pairs]
    rejected_examples: list[DistillRow]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def distill_summary(rows: list[DistillRow], n_examples: int = 5) -> DistillSummary:
    """The distill stage's pairs at a glance: counts, share kept, mean safety-RM scores, and the rejected
    distillations with the largest loss first (LLaMA 2 Table 40: the preprompt made the answer worse)."""
    kept = [r for r in rows if r["kept"]]
    rejected = sorted((r for r in rows if not r["kept"]), key=lambda r: (r["score_pre"] - r["score_plain"],
                                                                          str(r["prompt_id"])))
    return {"pairs": len(rows), "kept": len(kept), "kept_share": len(kept) / len(rows) if rows else None,
            "margin": rows[0].get("margin") if rows else None,
            "mean_score_plain": _mean([r["score_plain"] for r in rows]),
            "mean_score_pre": _mean([r["score_pre"] for r in rows]),
            "by_preprompt": {k: [sum(r["kept"] for r in rows if r["preprompt"] == k),
                                 sum(r["preprompt"] == k for r in rows)]
                             for k in sorted({r["preprompt"] for r in rows})},
            "rejected_examples": rejected[:n_examples]}


def _headline(s: DistillSummary) -> list[list[str]]:
    return [["pairs (adversarial prompts)", str(s["pairs"])],
            ["kept (preprompted answer scored higher by > margin)", f"{s['kept']} ({100 * s['kept_share']:.0f}%)"
             if s["kept_share"] is not None else "0"],
            ["margin", num(s["margin"])],
            ["mean safety RM score, plain", num(s["mean_score_plain"])],
            ["mean safety RM score, with preprompt", num(s["mean_score_pre"])],
            *[[f"kept / pairs, {k} preprompt", f"{a} / {b}"] for k, (a, b) in s["by_preprompt"].items()]]


def _rejected(r: DistillRow, n_chars: int) -> PromptAnswers:
    prompt = " ".join(m["content"] for m in r["messages"] if m["role"] == "user")
    return PromptAnswers(f"{r['prompt_id']} ({r.get('category') or 'no category'}, {r['preprompt']} preprompt)",
                         cut(prompt, n_chars),
                         (Answer("plain", f"safety {r['score_plain']:.3f}", cut(r["answer_plain"], n_chars)),
                          Answer("with preprompt", f"safety {r['score_pre']:.3f}", cut(r["answer_pre"], n_chars),
                                 "fr")))


def distill_sections(rows: list[DistillRow], n_chars: int = 600) -> list[Section]:
    """The summary table, the Fig. 16 histogram and the rejected distillations (Table 40)."""
    s = distill_summary(rows)
    intro = ("Each adversarial prompt was answered with and without a safety preprompt; the preprompted answer is "
             "kept for fine-tuning (without the preprompt) only where the safety RM scores it above the plain "
             "answer by more than the margin.")
    rejected = (AnswerList(("prompt (category, preprompt)", "prompt", "plain answer", "with preprompt"),
                           tuple(_rejected(r, n_chars) for r in s["rejected_examples"])) if s["rejected_examples"]
                else Paragraph(("None: every preprompted answer was kept.",)))
    return [Section("Safety context distillation (LLaMA 2 Sec. 4.2.4)",
                    (Paragraph((intro,)), table(["", "value"], _headline(s)),
                     Figures((("Safety RM scores with and without the preprompt (LLaMA 2 Fig. 16 analogue)",
                               distill_plot(rows)),)))),
            Section("Rejected distillations (the preprompt did not make the answer safer; LLaMA 2 Table 40)",
                    (rejected,), level=3)]
