"""Safety context distillation (LLaMA 2 Sec. 4.2.4): preprompts, the gate on safety-RM scores, training rows.

The model answers an adversarial prompt twice, with and without a safety preprompt; the preprompted answer is
kept only where the safety RM scores it above the plain one (Fig. 16 shows the shift; Table 40 shows the vague,
over-cautious answers a preprompt can cause, which the gate drops); the model is then fine-tuned on the kept
answers with the preprompt removed, so that it gives them without being told to.

Pure functions only (no model, no file): the stage pipeline/stages/distill.py does the I/O.
"""
from __future__ import annotations

import re
from typing import Optional

from saferounds.sampling.config import TARGETED_PREPROMPTS, DistillConfig

# The LLaMA 2 risk categories (Sec. 4.2.1), named as data.risk.RISK_CATEGORIES names them (a test checks).
CATEGORIES = tuple(TARGETED_PREPROMPTS)


def keep_distilled(score_pre: float, score_plain: float, margin: float = 0.0) -> bool:
    """LLaMA 2 Sec. 4.2.4 / Fig. 16: keep the preprompted answer only when the safety RM scores it higher than
    the model's own answer to the same prompt (by more than `margin`); otherwise keep nothing for that prompt,
    which drops the vague or needlessly cautious distillations of Table 40."""
    return score_pre - score_plain > margin


def targeted_preprompt(category: str, cfg: DistillConfig) -> str:
    """The category's preprompt followed by its answer template (LLaMA 2 Table 39's layout)."""
    own = getattr(cfg.categories, category)
    default_text, default_template = TARGETED_PREPROMPTS[category]
    text = own.preprompt if own.preprompt is not None else default_text
    template = own.answer_template if own.answer_template is not None else default_template
    return f"{text}\n\nAnswer using this template:\n{template}" if template.strip() else text


def choose_preprompt(category: Optional[str], cfg: DistillConfig) -> tuple[str, str]:
    """(kind, text): ("targeted", the category's preprompt) when `targeted` and the category is one of the three,
    else ("generic", the generic preprompt)."""
    if cfg.targeted and category in CATEGORIES:
        return "targeted", targeted_preprompt(category, cfg)
    return "generic", cfg.generic_preprompt


def with_preprompt(messages: list[dict], preprompt: str, as_system: bool) -> list[dict]:
    """The conversation with the preprompt in it: as the system message when the chat template has one (before
    any system message the prompt already has), else prepended to the first user turn."""
    if as_system:
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": f"{preprompt}\n\n{messages[0]['content']}"}, *messages[1:]]
        return [{"role": "system", "content": preprompt}, *messages]
    out, done = [], False
    for m in messages:
        if not done and m["role"] == "user":
            m, done = {"role": "user", "content": f"{preprompt}\n\n{m['content']}"}, True
        out.append(dict(m))
    return out


def supports_system_role(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (some raise on one, some drop it)."""
    marker = "saferounds-system-probe"
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": marker}, {"role": "user", "content": "hi"}],
                                             add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - templates raise their own exception types (jinja2, ValueError, ...)
        return False
    return marker in text


def training_row(pair: dict) -> dict:
    """An SFT row from a kept pair: the PLAIN prompt (preprompt removed) and the preprompted answer."""
    return {"prompt_id": pair["prompt_id"], "messages": pair["messages"], "completion": pair["answer_pre"]}


# --- category of a prompt without a `category` field -----------------------------------------------------

# The keyword fallback: whole-word patterns per category; the category with the most matches wins, ties in this
# order. A heuristic for prompt sets that carry no category; the LLM judge (classifier: judge) is better.
KEYWORDS = {
    "illicit_and_criminal": re.compile(
        r"\b(steal\w*|stole|theft|rob\w*|burgl\w*|shoplift\w*|hack\w*|malware|ransomware|phish\w*|bomb\w*|"
        r"explosive\w*|weapons?|guns?|drugs?|meth|cocaine|launder\w*|fraud\w*|scam\w*|counterfeit\w*|forg\w*|"
        r"murder\w*|kill\w*|poison\w*|smuggl\w*|illegal\w*|brib\w*|lock|locks|break into|kidnap\w*|crimes?)\b"),
    "hateful_and_harmful": re.compile(
        r"\b(hate\w*|racis\w*|sexis\w*|slurs?|insult\w*|harass\w*|bully\w*|demean\w*|humiliat\w*|inferior|"
        r"stereotyp\w*|make fun|mock\w*|self[- ]harm|suicid\w*|hurt myself|starv\w*|disabled|threaten\w*)\b"),
    "unqualified_advice": re.compile(
        r"\b(diagnos\w*|symptoms?|medication\w*|medicine|dosage|doses?|prescri\w*|treatment|therap\w*|"
        r"invest\w*|stocks?|savings|crypto\w*|tax(es)?|lawsuit|sue|legal|lawyer|mortgage|loans?|doctor|medical|"
        r"health|pills?)\b"),
}


def keyword_category(text: str) -> Optional[str]:
    """The risk category whose keywords occur most often in `text` (None when none occurs)."""
    low = text.lower()
    counts = {c: len(KEYWORDS[c].findall(low)) for c in CATEGORIES}
    best = max(CATEGORIES, key=lambda c: counts[c])  # max keeps the first of equal counts: CATEGORIES order
    return best if counts[best] else None


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def category_messages(messages: list[dict]) -> list[dict]:
    """What the LLM judge is asked to classify one prompt into a risk category (or none)."""
    names = ", ".join(CATEGORIES)
    return [{"role": "user", "content":
             "Classify the user request below into one of these risk categories of a safety policy: "
             f"{names}, or none.\n"
             "- illicit_and_criminal: crimes and illegal acts (theft, fraud, hacking, violence, weapons, drugs)\n"
             "- hateful_and_harmful: hate, harassment, demeaning content, self-harm, dangerous behaviour\n"
             "- unqualified_advice: medical, legal or financial advice that needs a professional\n\n"
             f"<request>\n{prompt_text(messages)}\n</request>\n\n"
             "Think briefly, then end your reply with one line: Category: NAME"}]


CATEGORY_REMINDER = ("Your reply did not end with the required line. Reply again with only: Category: NAME "
                     "(one of " + ", ".join(CATEGORIES) + ", none)")
_CATEGORY_LINE = re.compile(r"category\s*:\s*\**\s*([a-z_ ]+)", re.I)


def parse_category(reply: str) -> Optional[str]:
    """The last `Category: NAME` of a judge reply: a category, "none", or None when there is no such line."""
    found = _CATEGORY_LINE.findall(reply)
    if not found:
        return None
    name = found[-1].strip().lower().replace(" ", "_").rstrip("_")
    return name if name in CATEGORIES or name == "none" else None
