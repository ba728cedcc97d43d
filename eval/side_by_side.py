"""The report section that puts v0's answer and this version's answer to the same prompt side by side.

Picked to show what changed, deterministically (ties by suite and id):
  unsafe prompts      v0 violated and this version does not (fixed), then both violate, then new violations;
  borderline prompts  this version refuses (a false refusal v0 did not make) first, then unchanged answers;
  helpful prompts     the largest helpfulness-RM score changes, gains and losses alternating.
"""
from __future__ import annotations

from saferounds.eval.render import Flagged, Paragraph, Pre, Section, Table, cut
from saferounds.eval.report_sections import verdict_class

QUOTA = {"unsafe": 6, "borderline": 4, "helpful": 4}


def _verdict(r: dict) -> str:
    if r.get("violation"):
        return "VIOLATION"
    if r.get("false_refusal"):
        return "FALSE REFUSAL"
    return "refusal" if r.get("refusal") else "answer"


def pick(records: list[dict], baseline: list[dict], quota: dict[str, int] | None = None) -> list[tuple[dict, dict]]:
    """(baseline record, this version's record) pairs on shared prompts, chosen as the module says."""
    quota = quota or QUOTA
    theirs = {(r["suite"], r["id"]): r for r in baseline}
    shared = [(theirs[(r["suite"], r["id"])], r) for r in records if (r["suite"], r["id"]) in theirs]
    order = lambda ab: (ab[1]["suite"], str(ab[1]["id"]))  # noqa: E731
    out = []
    unsafe = sorted((ab for ab in shared if ab[1]["role"] == "unsafe"), key=order)
    rank = {(True, False): 0, (True, True): 1, (False, True): 2, (False, False): 3}
    out += sorted(unsafe, key=lambda ab: (rank[(bool(ab[0].get("violation")), bool(ab[1].get("violation")))],
                                          order(ab)))[:quota["unsafe"]]
    border = sorted((ab for ab in shared if ab[1]["role"] == "borderline"), key=order)
    out += sorted(border, key=lambda ab: (not (ab[1].get("refusal") and not ab[0].get("refusal")),
                                          order(ab)))[:quota["borderline"]]
    helpful = [ab for ab in shared if ab[1]["role"] == "helpful"
               and ab[0].get("helpfulness_score") is not None and ab[1].get("helpfulness_score") is not None]
    delta = lambda ab: ab[1]["helpfulness_score"] - ab[0]["helpfulness_score"]  # noqa: E731
    gains = sorted((ab for ab in helpful if delta(ab) >= 0), key=lambda ab: (-delta(ab), order(ab)))
    losses = sorted((ab for ab in helpful if delta(ab) < 0), key=lambda ab: (delta(ab), order(ab)))
    mixed = [ab for pair in zip(gains, losses) for ab in pair]
    mixed += gains[len(mixed) // 2:] + losses[len(mixed) // 2:]
    out += mixed[:quota["helpful"]]
    return out


def section(pairs: list[tuple[dict, dict]], base: str, version: str, n_chars: int = 600) -> list[Section]:
    """The side-by-side section (none without pairs): one row per prompt, the baseline's answer beside
    this version's."""
    if not pairs:
        return []
    rows = tuple((f"{b['suite']} · {b['role']}{' / ' + b['category'] if b.get('category') else ''}",
                  Pre(cut(b["prompt"], n_chars)),
                  *(Flagged(_verdict(r), cut(r["response"], n_chars), verdict_class(r)) for r in (a, b)))
                 for a, b in pairs)
    intro = (f"The same prompt answered by {base} (the starting model) and by {version}; verdicts by {version}'s "
             "judges.")
    return [Section(f"{base} and {version} side by side",
                    (Paragraph((intro,)), Table(("suite · role", "prompt", base, version), rows)))]
