"""BeaverTails (one response per row, labelled safe or not, with harm-category flags): its prompts and
its labelled responses; no preference pairs."""

from __future__ import annotations

from saferounds.data import fields
from saferounds.data.adapted import Seen, response_record
from saferounds.data.risk import BEAVERTAILS_RISK


def beavertails_row(row, line, errors) -> dict | None:
    prompt = fields.text(row, "prompt", line, errors)
    response = fields.text(row, "response", line, errors)
    is_safe = fields.strict_boolean(row, "is_safe", line, errors)
    harms = fields.flags(row, "category", line, errors)
    if None in (prompt, response, is_safe, harms):
        return None
    return {"prompt": prompt, "response": response, "is_safe": is_safe, "harms": harms}


# --- row adapters by kind (data.formats.ADAPTERS) ---------------------------------------------------

def prompts(row, line, errors, file) -> Seen | None:
    r = beavertails_row(row, line, errors)
    return None if r is None else Seen(r["prompt"], not r["is_safe"], r["harms"], BEAVERTAILS_RISK)


def responses(row, line, errors, file) -> list[dict]:
    r = beavertails_row(row, line, errors)
    return [] if r is None else [response_record(file.pid(line), r["prompt"], r["response"], r["is_safe"],
                                                 r["harms"], BEAVERTAILS_RISK)]
