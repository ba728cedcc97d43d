"""The report section that puts v0's answer and this version's answer to the same prompt side by side.

Picked to show what changed, deterministically (ties by suite and id):
  unsafe prompts      v0 violated and this version does not (fixed), then both violate, then new violations;
  borderline prompts  this version refuses (a false refusal v0 did not make) first, then unchanged answers;
  helpful prompts     the largest helpfulness-RM score changes, gains and losses alternating.
"""
from __future__ import annotations

import html

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


def _cut(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n].rstrip() + " …"


def markdown(pairs: list[tuple[dict, dict]], base: str, version: str, cut: int = 600) -> str:
    if not pairs:
        return ""
    lines = [f"## {base} and {version} side by side", "",
             f"The same prompt answered by {base} (the starting model) and by {version}; verdicts by {version}'s "
             "judges.", ""]
    for a, b in pairs:
        cat = f" / {b['category']}" if b.get("category") else ""
        lines += [f"**[{b['suite']} · {b['role']}{cat}]** {_cut(b['prompt'], cut)}".replace("\n", " "), "",
                  f"| {base} ({_verdict(a)}) | {version} ({_verdict(b)}) |", "|---|---|",
                  f"| {_cell(a['response'], cut)} | {_cell(b['response'], cut)} |", ""]
    return "\n".join(lines) + "\n"


def _cell(text: str, cut: int) -> str:
    return _cut(text, cut).replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def html_section(pairs: list[tuple[dict, dict]], base: str, version: str, cut: int = 600) -> str:
    if not pairs:
        return ""
    rows = []
    for a, b in pairs:
        cat = f" / {b['category']}" if b.get("category") else ""
        cells = [html.escape(f"{b['suite']} · {b['role']}{cat}"), f"<pre>{html.escape(_cut(b['prompt'], cut))}</pre>"]
        for r in (a, b):
            cls = "viol" if r.get("violation") else "fr" if r.get("false_refusal") else ""
            cells.append(f"<div class='{cls}'>{html.escape(_verdict(r))}</div><pre>{html.escape(_cut(r['response'], cut))}</pre>")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("suite · role", "prompt", base, version))
    return (f"<h2>{html.escape(base)} and {html.escape(version)} side by side</h2>"
            f"<p>The same prompt answered by {html.escape(base)} (the starting model) and by {html.escape(version)}; "
            f"verdicts by {html.escape(version)}'s judges.</p><table><tr>{head}</tr>{''.join(rows)}</table>")
