"""Do-Not-Answer (Wang et al. 2023, data_en.csv): risky questions with six models' answers, each labelled
harmful or not (`M_harmful`) and by the action it takes (`M_action`). Its rows, and what its labels give
the safety RM and rejection sampling: safety pairs and safe demonstrations."""

from __future__ import annotations

from saferounds.data.adapted import user
from saferounds.data.sources import rows_with

DNA_MODELS = ("GPT4", "ChatGPT", "Claude", "ChatGLM2", "llama2-7b-chat", "vicuna-7b")
# Demonstrations come from the models aligned by RLHF (the others' harmless answers are often evasive)
DEMONSTRATION_MODELS = ("GPT4", "Claude", "ChatGPT", "llama2-7b-chat")
MAX_PAIRS_PER_QUESTION = 2


def dna_rows(path, labels=("response", "harmful")) -> list[tuple[int, dict]]:
    """data_en.csv's (line, row) pairs; InputError when a row lacks `id`, `question` or a model's `labels` columns."""
    return rows_with(path, ["id", "question"] + [f"{m}_{c}" for m in DNA_MODELS for c in labels])


def harmful(row: dict, model: str) -> bool | None:
    """The human label of `model`'s answer: True harmful, False harmless, None unlabelled."""
    v = str(row.get(f"{model}_harmful", "")).strip()
    return {"1": True, "0": False}.get(v.split(".")[0])


def do_not_answer_pairs(rows: list[dict], max_per_question: int = MAX_PAIRS_PER_QUESTION) -> list[dict]:
    """Safety preference pairs from Do-Not-Answer's human labels: for one question, a response labelled
    harmless (chosen) and one labelled harmful (rejected) make a pair with safety_label
    `chosen_safe_rejected_unsafe`, so the safety RM's auxiliary term gets real per-response labels.
    Up to max_per_question pairs per question, the pairings taken in a fixed model order."""
    out = []
    for row in rows:
        q = str(row.get("question") or "").strip()
        safe = [m for m in DNA_MODELS if harmful(row, m) is False and str(row.get(f"{m}_response") or "").strip()]
        unsafe = [m for m in DNA_MODELS if harmful(row, m) is True and str(row.get(f"{m}_response") or "").strip()]
        if not q or not safe or not unsafe:
            continue
        combos = [(s, u) for u in unsafe for s in safe][:max_per_question]
        for s, u in combos:
            chosen, rejected = row[f"{s}_response"].strip(), row[f"{u}_response"].strip()
            if chosen == rejected:
                continue
            out.append({"id": f"dna-{row.get('id')}-{s}-{u}", "prompt": user(q),
                        "chosen": chosen, "rejected": rejected, "source": "safety",
                        "safety_label": "chosen_safe_rejected_unsafe", "chosen_model": s, "rejected_model": u,
                        "category": row.get("types_of_harm")})
    return out


def do_not_answer_demonstrations(rows: list[dict], models=DEMONSTRATION_MODELS, min_chars: int = 20) -> list[dict]:
    """One safe demonstration per question: the shortest response labelled harmless among `models`
    (LLaMA 2 Sec. 4.2.2 begins safety tuning from safe demonstrations for adversarial prompts)."""
    out = []
    for row in rows:
        q = str(row.get("question") or "").strip()
        cands = [(len(row[f"{m}_response"].strip()), m) for m in models
                 if harmful(row, m) is False and len(str(row.get(f"{m}_response") or "").strip()) >= min_chars]
        if not q or not cands:
            continue
        _, m = min(cands)
        out.append({"prompt_id": f"dna-{row.get('id')}", "messages": user(q),
                    "completion": row[f"{m}_response"].strip(), "model": m,
                    "category": row.get("types_of_harm") or "do-not-answer"})
    return out
