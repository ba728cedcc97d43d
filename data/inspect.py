"""What `saferounds data validate` and `data convert` do: validate a file as one kind, summarize what a
public dataset gives (pairs by source and rating, safety labels, risk categories), convert a file to
our rows."""

from __future__ import annotations

from collections import Counter

from saferounds.core.errors import InputError
from saferounds.core.io import output_file, write_jsonl
from saferounds.core.records import RATINGS
from saferounds.data.formats import KINDS, PRODUCES, adapt, read_detected
from saferounds.data.load import LOADERS, load_preferences, load_prompts, load_responses


def validate_file(path, kind: str) -> int:
    """Load a file as `kind` and return how many records it holds (InputError when bad)."""
    if kind not in LOADERS:
        raise InputError(f"--kind: expected one of {', '.join(LOADERS)}, got {kind!r}")
    return len(LOADERS[kind](path))


def summarize(kind: str, records: list[dict], counts: Counter) -> dict:
    """Counts a user checks before training: pairs by source and rating, safety labels, prompts and
    responses by LLaMA 2 risk category."""
    s: dict = {"records": len(records)}
    if kind == "preferences":
        s["by_source"] = dict(Counter(p["source"] for p in records))
        s["by_rating"] = {}
        for src in s["by_source"]:
            n = Counter(p["rating"] or "unrated" for p in records if p["source"] == src)
            s["by_rating"][src] = {r: n[r] for r in (*RATINGS, "unrated") if n[r]}  # LLaMA 2's order
        s["by_safety_label"] = dict(Counter(p["safety_label"] for p in records if p["safety_label"]))
        s["dropped_by_safety_rm"] = counts.get("chosen_unsafe_rejected_safe", 0)
    elif kind == "prompts":
        s["safety"] = sum(p["is_safety"] for p in records)
        s["by_category"] = dict(Counter(p["category"] or "none" for p in records if p["is_safety"]))
    else:
        s["unsafe"] = sum(not r["is_safe"] for r in records)
        s["by_category"] = dict(Counter(r["category"] or "none" for r in records if not r["is_safe"]))
    s["dropped"] = {k: v for k, v in counts.items() if v and k != "chosen_unsafe_rejected_safe"}
    return s


def summarize_file(path, kind: str | None = None) -> dict | None:
    """{format, kinds: {kind: summary}} for a public-dataset file (every kind it gives, or `kind`);
    None when the file is in one of our own shapes."""
    fmt, rows, errors = read_detected(path)
    if fmt is None:
        errors.raise_if_any()
        return None
    kinds = [kind] if kind else list(PRODUCES[fmt])
    out = {}
    for k in kinds:
        records, counts = adapt(path, rows, fmt, k, errors)
        out[k] = summarize(k, records, counts)
    return {"file": str(path), "format": fmt, "ok": True, "kinds": out}


def convert_file(path, kind: str, output, source: str | None = None) -> dict:
    """Write `path` as our `kind` rows (JSONL, atomically) to `output`; any supported file works, public
    dataset or our own shape. Returns {file, format, kind, output, summary}."""
    if kind not in KINDS:
        raise InputError(f"--to: expected one of {', '.join(KINDS)}, got {kind!r}")
    if source not in (None, "helpfulness", "safety"):
        raise InputError(f"--source: expected helpfulness or safety, got {source!r}")
    if source is not None and kind != "preferences":
        raise InputError("--source: only with --to preferences")
    output_file(output, "--output", [path])  # the rows are read before the write, but the input would be gone
    fmt, rows, errors = read_detected(path)
    if fmt is not None:
        records, counts = adapt(path, rows, fmt, kind, errors, source)
    else:
        errors.raise_if_any()
        loader = {"preferences": lambda p: load_preferences(p, source), "prompts": load_prompts,
                  "responses": load_responses}[kind]
        records, counts = loader(path), Counter()
        if source is not None:
            records = [r for r in records if r["source"] == source]
    write_jsonl(output, records)
    return {"file": str(path), "format": fmt or "saferounds", "kind": kind, "output": str(output),
            "summary": summarize(kind, records, counts)}
