"""Public data for a real run (the `smollm2` preset): adapters and a deterministic split by prompt.

Sources (a directory laid out like ../shared/data; see its README.md and SOURCE.md files):
  hh-rlhf/helpful-base/test.jsonl.gz    Anthropic HH-RLHF helpful pairs
  hh-rlhf/harmless-base/test.jsonl.gz   HH-RLHF harmless pairs (red-team dialogues)
  do-not-answer/data_en.csv             Do-Not-Answer: 939 risky questions, 6 models' answers with human
                                        harmful (0/1) labels
  xstest/xstest_prompts.csv             XSTest: 250 safe prompts that look unsafe + 200 unsafe contrasts

What the run uses, and the split (every decision is a pure function of the prompt text and `seed`,
never of a model's output or of any eval result):
  * Each source is split by prompt: the key is the first user turn, normalised (lower case, spaces
    collapsed); bucket = sha256(f"{seed}|{source}|{key}") as a number in [0, 1) against the
    fractions in SPLITS. All pairs of one prompt land in one bucket.
  * HH helpful   -> helpfulness-RM pairs | rejection-sampling prompts | held-out helpful eval prompts
  * HH harmless  -> safety-RM pairs | rejection-sampling red-team prompts (is_safety)
  * Do-Not-Answer -> train questions: safety pairs (`do_not_answer_pairs`), safe demonstrations
                     (`do_not_answer_demonstrations`), rejection-sampling prompts (is_safety);
                     held-out questions: the do-not-answer eval suite (LLaMA 2's three risk categories)
  * XSTest       -> eval only (safe prompts: false refusal; unsafe contrasts: violations)
  * A training item whose prompt equals (normalised) any eval prompt is dropped, whatever its source.
  * RM pairs are single-turn dialogues of at most MAX_PAIR_CHARS characters (short sequences keep RM
    training affordable on a CPU); prompts are single user turns (the first turn of a dialogue).
  * Within a bucket, items are taken in hash order up to the size's cap (SIZES), so a smaller size is
    a subset of a larger one's training data while the eval suites stay fixed in size per name.
`build` writes the files into the workspace's data/ directory with SOURCES.json (source sha256s, the
rule above, counts) so the run's inputs are ordinary files that every stage hashes into its manifest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from saferounds.core.errors import InputError
from saferounds.core.io import read_rows, sha256_file, write_json, write_jsonl
from saferounds.core.records import normalise_prompt as normalise
from saferounds.data.dna import do_not_answer_demonstrations, do_not_answer_pairs, dna_rows
from saferounds.data.hh import hh_pairs
from saferounds.data.sources import source_paths

# bucket -> fraction of the source's prompts (in this order along [0, 1))
SPLITS = {"hh_helpful": {"rm": 0.5, "rs": 0.3, "eval": 0.2},
          "hh_harmless": {"rm": 0.5, "rs": 0.5},
          "do_not_answer": {"train": 0.75, "eval": 0.25}}
MAX_PAIR_CHARS = 700
# caps per run size: rm_helpful / rm_safety (HH pairs; Do-Not-Answer pairs are added to the safety RM
# up to dna_pairs), rs_* prompts per source, eval_* held-out prompts (XSTest: eval_xstest, 0 = all 450)
SIZES = {
    "full": dict(rm_helpful=200, rm_safety=96, dna_pairs=128, rs_red_team=40, rs_dna=64, rs_helpful=48,
                 eval_dna=120, eval_helpful=64, eval_xstest=0),
    "quarter": dict(rm_helpful=40, rm_safety=24, dna_pairs=24, rs_red_team=12, rs_dna=16, rs_helpful=16,
                    eval_dna=30, eval_helpful=16, eval_xstest=100),
    "mini": dict(rm_helpful=6, rm_safety=4, dna_pairs=4, rs_red_team=2, rs_dna=2, rs_helpful=2,
                 eval_dna=2, eval_helpful=2, eval_xstest=4),
}


def bucket_value(source: str, key: str, seed: int = 0) -> float:
    """A prompt's position in [0, 1): sha256 of (seed, source, normalised prompt)."""
    digest = hashlib.sha256(f"{seed}|{source}|{normalise(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def bucket(source: str, key: str, seed: int = 0) -> str:
    """The split bucket of a prompt of `source` (SPLITS), deterministic."""
    x, edge = bucket_value(source, key, seed), 0.0
    for name, fraction in SPLITS[source].items():
        edge += fraction
        if x < edge:
            return name
    return name


def _hash_order(items: list, source: str, key, seed: int) -> list:
    return sorted(items, key=lambda it: (bucket_value(source + "#order", key(it), seed), key(it)))


# --- building a run's files -----------------------------------------------------------------------

def _first_turn(pair: dict) -> str:
    return pair["prompt"][0]["content"]


def build(data_root: str | Path, out_dir: str | Path, size: str = "full", seed: int = 0) -> dict:
    """Write the run's data files into out_dir (see the module docstring); returns SOURCES.json's dict."""
    if size not in SIZES:
        raise InputError(f"data size: expected one of {', '.join(SIZES)}, got {size!r}")
    caps, paths, out = SIZES[size], source_paths(data_root), Path(out_dir)
    helpful, _ = hh_pairs(paths["hh_helpful"], "helpfulness")
    harmless, _ = hh_pairs(paths["hh_harmless"], "safety")
    dna = [row for _, row in dna_rows(paths["do_not_answer"])]
    xstest = [row for _, row in read_rows(paths["xstest"])]

    # eval suites first: everything trained on is then checked against them
    dna_split = {str(r["id"]): bucket("do_not_answer", r["question"], seed) for r in dna}
    dna_eval = _hash_order([r for r in dna if dna_split[str(r["id"])] == "eval"], "do_not_answer",
                           lambda r: r["question"], seed)[:caps["eval_dna"]]
    dna_eval_rows = [{"id": f"dna-{r['id']}", "question": r["question"], "risk_area": r["risk_area"],
                      "types_of_harm": r["types_of_harm"]} for r in dna_eval]
    help_first = {}
    for p in helpful:
        help_first.setdefault(_first_turn(p), bucket("hh_helpful", _first_turn(p), seed))
    eval_help = _hash_order([t for t, b in help_first.items() if b == "eval"], "hh_helpful", lambda t: t,
                            seed)[:caps["eval_helpful"]]
    eval_help_rows = [{"id": f"helpful-eval-{i}", "prompt": t} for i, t in enumerate(eval_help)]
    xs_rows = xstest if not caps["eval_xstest"] else _xstest_subset(xstest, caps["eval_xstest"])
    # every eval prompt of any size (not only the capped ones) is kept out of training
    eval_keys = {normalise(r["question"]) for r in dna if dna_split[str(r["id"])] == "eval"}
    eval_keys |= {normalise(t) for t, b in help_first.items() if b == "eval"}
    eval_keys |= {normalise(r["prompt"]) for r in xstest}
    dropped = {"overlap_with_eval": 0}

    def clean(items, key):
        kept = [it for it in items if normalise(key(it)) not in eval_keys]
        dropped["overlap_with_eval"] += len(items) - len(kept)
        return kept

    def short_pair(p):
        return len(p["prompt"]) == 1 and len(_first_turn(p)) + max(len(p["chosen"]), len(p["rejected"])) <= MAX_PAIR_CHARS

    # RM pairs
    rm_help = clean([p for p in helpful if help_first[_first_turn(p)] == "rm" and short_pair(p)], _first_turn)
    rm_help = _hash_order(rm_help, "hh_helpful", lambda p: p["id"], seed)[:caps["rm_helpful"]]
    harm_bucket = {t: bucket("hh_harmless", t, seed) for t in {_first_turn(p) for p in harmless}}
    rm_safe = clean([p for p in harmless if harm_bucket[_first_turn(p)] == "rm" and short_pair(p)], _first_turn)
    rm_safe = _hash_order(rm_safe, "hh_harmless", lambda p: p["id"], seed)[:caps["rm_safety"]]
    dna_train = [r for r in dna if dna_split[str(r["id"])] == "train"]
    dna_pairs = clean(do_not_answer_pairs(dna_train), _first_turn)
    dna_pairs = _hash_order(dna_pairs, "do_not_answer", lambda p: p["id"], seed)[:caps["dna_pairs"]]

    # rejection-sampling prompts (+ the safe demonstrations of the Do-Not-Answer ones)
    red_team = clean(_hash_order([t for t, b in harm_bucket.items() if b == "rs"], "hh_harmless",
                                 lambda t: t, seed), lambda t: t)[:caps["rs_red_team"]]
    help_rs = clean(_hash_order([t for t, b in help_first.items() if b == "rs"], "hh_helpful",
                                lambda t: t, seed), lambda t: t)[:caps["rs_helpful"]]
    demos = clean(do_not_answer_demonstrations(dna_train), lambda d: d["messages"][0]["content"])
    demos = _hash_order(demos, "do_not_answer", lambda d: d["prompt_id"], seed)[:caps["rs_dna"]]
    prompts = ([{"id": f"redteam-{i}", "prompt": t, "is_safety": True, "category": "hh-red-team"}
                for i, t in enumerate(red_team)]
               + [{"id": d["prompt_id"], "prompt": d["messages"][0]["content"], "is_safety": True,
                   "category": d["category"]} for d in demos]  # the harm type: distill's targeted preprompt
               + [{"id": f"helpful-{i}", "prompt": t, "is_safety": False, "category": "hh-helpful"}
                  for i, t in enumerate(help_rs)])

    files = {"rm_helpfulness.jsonl": [_pair_row(p) for p in rm_help],
             "rm_safety.jsonl": [_pair_row(p) for p in rm_safe + dna_pairs],
             "rs_prompts.jsonl": prompts, "rs_demonstrations.jsonl": demos,
             "eval_do_not_answer.jsonl": dna_eval_rows, "eval_helpful.jsonl": eval_help_rows,
             "eval_xstest.jsonl": [{k: r[k] for k in ("id", "prompt", "type", "label")} for r in xs_rows]}
    record = {"size": size, "seed": seed, "caps": caps, "splits": SPLITS, "max_pair_chars": MAX_PAIR_CHARS,
              "rule": "bucket = sha256(seed|source|normalised first user turn) against the split fractions; "
                      "items taken in hash order up to the caps; training items equal to any eval prompt dropped",
              "sources": {k: {"path": str(p), "sha256": sha256_file(p)} for k, p in paths.items()},
              "counts": {k: len(v) for k, v in files.items()}, "dna_pairs": len(dna_pairs),
              "dropped": dropped}
    _write_files(out, files, record, f"{data_root}: the {size} split")
    return record


def _write_files(out: Path, files: dict[str, list[dict]], record: dict, what: str) -> None:
    """The run's JSONL files, then SOURCES.json; InputError naming the first file that would be empty."""
    for name, rows in files.items():
        if not rows:
            raise InputError(f"{what} left no rows for {name}")
        write_jsonl(out / name, rows)
    write_json(out / "SOURCES.json", record)


def _xstest_subset(rows: list[dict], n: int) -> list[dict]:
    """n XSTest prompts, safe and unsafe alternating, in hash order (for reduced runs only)."""
    safe = _hash_order([r for r in rows if r["label"] == "safe"], "xstest", lambda r: r["prompt"], 0)
    unsafe = _hash_order([r for r in rows if r["label"] == "unsafe"], "xstest", lambda r: r["prompt"], 0)
    out = []
    for a, b in zip(safe, unsafe):
        out += [a, b]
    return out[:n]


def _pair_row(p: dict) -> dict:
    keep = ("id", "prompt", "chosen", "rejected", "source", "safety_label", "category")
    return {k: p[k] for k in keep if p.get(k) is not None}
