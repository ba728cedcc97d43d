"""Public data for a real run (the `smollm2` preset): adapters and a deterministic split by prompt.

Sources (a directory laid out like ../shared/data; see its README.md and SOURCE.md files):
  hh-rlhf/helpful-base/test.jsonl.gz    Anthropic HH-RLHF helpful pairs
  hh-rlhf/helpful-online/, helpful-rejection-sampled/   more HH helpful pairs (RM pairs only)
  hh-rlhf/harmless-base/test.jsonl.gz   HH-RLHF harmless pairs (red-team dialogues)
  do-not-answer/data_en.csv             Do-Not-Answer: 939 risky questions, 6 models' answers with human
                                        harmful (0/1) labels
  xstest/xstest_prompts.csv             XSTest: 250 safe prompts that look unsafe + 200 unsafe contrasts

What the run uses, and the split (every decision is a pure function of the prompt text and `seed`,
never of a model's output or of any eval result):
  * Each source is split by prompt: the key is the first user turn, normalised (lower case, spaces
    collapsed); bucket = sha256(f"{seed}|{source}|{key}") as a number in [0, 1) against the
    fractions in SPLITS. All pairs of one prompt land in one bucket.
  * HH helpful   -> RM pairs | rejection-sampling prompts | held-out helpful eval prompts (the last two
                    from helpful-base only); RM pairs split again by prompt (RM_SPLITS): helpfulness-RM
                    training pairs | held-out pairs | the gold helpfulness RM's pairs | its held-out pairs
  * HH harmless  -> RM pairs (safety-RM training | held out) | rejection-sampling red-team prompts (is_safety)
  * Do-Not-Answer -> train questions: safety pairs (`do_not_answer_pairs`; a part of the questions gives
                     held-out pairs instead, every harmless x harmful pairing), safe demonstrations
                     (`do_not_answer_demonstrations`), rejection-sampling prompts (is_safety);
                     held-out questions: the do-not-answer eval suite (LLaMA 2's three risk categories)
  * XSTest       -> eval only (safe prompts: false refusal; unsafe contrasts: violations)
  * A training item whose prompt equals (normalised) any eval prompt is dropped, whatever its source.
  * RM training pairs: every pair of the training prompts at size `full` (the preset's RMs are heads on a
    frozen encoder: each text is read once); at the smaller sizes single-turn dialogues of at most
    MAX_PAIR_CHARS characters (short sequences keep fine-tuning a decoder RM affordable on a CPU); held-out and gold pairs are every pair of their prompts (multi-turn
    too: an RM reads their end); prompts are single user turns (the first turn of a dialogue).
  * Held-out and gold pairs carry `origin` (hh_helpful, hh_harmless, do_not_answer): the held-out
    accuracy is reported per origin. Held-out pairs are never trained on, and no held-out, gold or
    training prompt is in another of the three (tests/test_public_data.py).
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
from saferounds.data.sources import provenance, source_paths

# bucket -> fraction of the source's prompts (in this order along [0, 1))
SPLITS = {"hh_helpful": {"rm": 0.5, "rs": 0.3, "eval": 0.2},
          "hh_harmless": {"rm": 0.5, "rs": 0.5},
          "do_not_answer": {"train": 0.75, "eval": 0.25}}
# inside each source's RM bucket, a second split by prompt (sha256 of seed|source#rm|prompt): pairs trained on
# | pairs held out for the RMs' accuracy (never trained on) | the gold helpfulness RM's pairs and its own
# held-out pairs (prompts disjoint from the proxy RM's: Gao et al. 2022's proxy vs gold). Do-Not-Answer's
# `train` questions split the same way (its `eval` questions stay the eval suite's alone).
RM_SPLITS = {"hh_helpful": {"train": 0.45, "heldout": 0.2, "gold": 0.25, "gold_heldout": 0.1},
             "hh_harmless": {"train": 0.6, "heldout": 0.4},
             "do_not_answer": {"train": 0.6, "heldout": 0.4}}
HELPFUL_MORE = ("hh_helpful_online", "hh_helpful_rejection_sampled")  # data.sources keys: RM pairs only
DNA_HELDOUT_PAIRINGS = 100  # held-out Do-Not-Answer questions give every harmless x harmful pairing (<= 9)
MAX_PAIR_CHARS = 700
# caps per run size: rm_helpful / rm_safety (HH pairs; Do-Not-Answer pairs are added to the safety RM
# up to dna_pairs; rm_short_only: only single-turn pairs of at most MAX_PAIR_CHARS, for RMs that fine-tune a
# decoder; `full` trains frozen-encoder heads, which read a text once, on every pair), rs_* prompts per source, eval_* held-out prompts (XSTest: eval_xstest, 0 = all 450),
# heldout_* held-out RM pairs per origin (0 = all), gold_* the gold helpfulness RM's pairs and held-out pairs
SIZES = {
    "full": dict(rm_helpful=1200, rm_safety=700, dna_pairs=400, rm_short_only=False, rs_red_team=40, rs_dna=64, rs_helpful=48,
                 eval_dna=120, eval_helpful=64, eval_xstest=0,
                 heldout_helpful=400, heldout_harmless=400, heldout_dna=0, gold_helpful=800, gold_heldout=300),
    "quarter": dict(rm_helpful=40, rm_safety=24, dna_pairs=24, rm_short_only=True, rs_red_team=12, rs_dna=16, rs_helpful=16,
                    eval_dna=30, eval_helpful=16, eval_xstest=100,
                    heldout_helpful=100, heldout_harmless=100, heldout_dna=60, gold_helpful=160, gold_heldout=60),
    "mini": dict(rm_helpful=6, rm_safety=4, dna_pairs=4, rm_short_only=True, rs_red_team=2, rs_dna=2, rs_helpful=2,
                 eval_dna=2, eval_helpful=2, eval_xstest=4,
                 heldout_helpful=4, heldout_harmless=3, heldout_dna=2, gold_helpful=6, gold_heldout=3),
}


def bucket_value(source: str, key: str, seed: int = 0) -> float:
    """A prompt's position in [0, 1): sha256 of (seed, source, normalised prompt)."""
    digest = hashlib.sha256(f"{seed}|{source}|{normalise(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _pick(x: float, fractions: dict[str, float]) -> str:
    edge = 0.0
    for name, fraction in fractions.items():
        edge += fraction
        if x < edge:
            return name
    return name


def bucket(source: str, key: str, seed: int = 0) -> str:
    """The split bucket of a prompt of `source` (SPLITS), deterministic."""
    return _pick(bucket_value(source, key, seed), SPLITS[source])


def rm_bucket(source: str, key: str, seed: int = 0) -> str:
    """Within the RM bucket of `source`, the part a prompt's pairs go to (RM_SPLITS): train, heldout, gold..."""
    return _pick(bucket_value(source + "#rm", key, seed), RM_SPLITS[source])


def _hash_order(items: list, source: str, key, seed: int) -> list:
    return sorted(items, key=lambda it: (bucket_value(source + "#order", key(it), seed), key(it)))


# --- building a run's files -----------------------------------------------------------------------

def _unique(items: list, key) -> list:
    """The first item per normalised key: Do-Not-Answer lists a few questions twice under two ids, and a
    suite that asks one question twice counts its answer twice."""
    seen: set[str] = set()
    return [it for it in items if not (normalise(key(it)) in seen or seen.add(normalise(key(it))))]


def _first_turn(pair: dict) -> str:
    return pair["prompt"][0]["content"]


def _short_pair(p: dict) -> bool:
    """A single-turn pair of at most MAX_PAIR_CHARS characters (what the RMs train on)."""
    return len(p["prompt"]) == 1 and len(_first_turn(p)) + max(len(p["chosen"]), len(p["rejected"])) <= MAX_PAIR_CHARS


def _cap(items: list, n: int) -> list:
    return items if not n else items[:n]


def _origin(pairs: list[dict], origin: str) -> list[dict]:
    return [{**p, "origin": origin} for p in pairs]


class _Sources:
    """The public rows a build reads, and the bucket of every prompt (computed once)."""

    def __init__(self, data_root, seed: int):
        paths = source_paths(data_root)
        self.paths, self.seed = paths, seed
        self.helpful, _ = hh_pairs(paths["hh_helpful"], "helpfulness")
        # the helpful-online and rejection-sampled splits feed the RMs' pairs only; the helpful eval suite and
        # the rs prompts are drawn from helpful-base alone (so they stay what they were before these were added)
        self.helpful_more = [p for k in HELPFUL_MORE for p in hh_pairs(paths[k], "helpfulness")[0]]
        self.harmless, _ = hh_pairs(paths["hh_harmless"], "safety")
        self.dna = [row for _, row in dna_rows(paths["do_not_answer"])]
        self.xstest = [row for _, row in read_rows(paths["xstest"])]
        self.help_bucket = {t: bucket("hh_helpful", t, seed)
                            for t in {_first_turn(p) for p in self.helpful + self.helpful_more}}
        self.harm_bucket = {t: bucket("hh_harmless", t, seed) for t in {_first_turn(p) for p in self.harmless}}
        self.dna_bucket = {str(r["id"]): bucket("do_not_answer", r["question"], seed) for r in self.dna}

    def rm_split(self, source: str, key: str) -> str:
        return rm_bucket(source, key, self.seed)


def build(data_root: str | Path, out_dir: str | Path, size: str = "full", seed: int = 0) -> dict:
    """Write the run's data files into out_dir (see the module docstring); returns SOURCES.json's dict."""
    if size not in SIZES:
        raise InputError(f"data size: expected one of {', '.join(SIZES)}, got {size!r}")
    caps, src, out = SIZES[size], _Sources(data_root, seed), Path(out_dir)
    # eval suites first: everything trained on is then checked against them
    suites, eval_keys = _eval_suites(src, caps)
    dropped = {"overlap_with_eval": 0}

    def clean(items, key):
        kept = [it for it in items if normalise(key(it)) not in eval_keys]
        dropped["overlap_with_eval"] += len(items) - len(kept)
        return kept

    rm_files, rm_counts = _rm_files(src, caps, clean)
    prompts, demos = _rs_prompts(src, caps, clean)
    files = {**rm_files, "rs_prompts.jsonl": prompts, "rs_demonstrations.jsonl": demos, **suites}
    record = {"size": size, "seed": seed, "caps": caps, "splits": SPLITS, "rm_splits": RM_SPLITS,
              "max_pair_chars": MAX_PAIR_CHARS,
              "rule": "bucket = sha256(seed|source|normalised first user turn) against the split fractions; "
                      "the RM bucket split again by sha256(seed|source#rm|...) into trained / held-out / gold; "
                      "items taken in hash order up to the caps; training items equal to any eval prompt dropped",
              "sources": {k: {"path": str(p), "sha256": sha256_file(p), **provenance(data_root, k)}
                          for k, p in src.paths.items()},  # provenance: hub id, revision, commit (data.hub)
              "counts": {k: len(v) for k, v in files.items()}, **rm_counts, "dropped": dropped}
    _write_files(out, files, record, f"{data_root}: the {size} split")
    return record


def _eval_suites(src: _Sources, caps: dict) -> tuple[dict[str, list], set[str]]:
    """The eval suites' files, and every eval prompt of any size (not only the capped ones), normalised."""
    seed, dna_split = src.seed, src.dna_bucket
    dna_eval = _unique(_hash_order([r for r in src.dna if dna_split[str(r["id"])] == "eval"], "do_not_answer",
                                   lambda r: r["question"], seed), lambda r: r["question"])[:caps["eval_dna"]]
    base_first = {_first_turn(p) for p in src.helpful}
    eval_help = _hash_order([t for t in base_first if src.help_bucket[t] == "eval"], "hh_helpful", lambda t: t,
                            seed)[:caps["eval_helpful"]]
    xs_rows = src.xstest if not caps["eval_xstest"] else _xstest_subset(src.xstest, caps["eval_xstest"])
    eval_keys = {normalise(r["question"]) for r in src.dna if dna_split[str(r["id"])] == "eval"}
    eval_keys |= {normalise(t) for t, b in src.help_bucket.items() if b == "eval"}
    eval_keys |= {normalise(r["prompt"]) for r in src.xstest}
    suites = {"eval_do_not_answer.jsonl": [{"id": f"dna-{r['id']}", "question": r["question"],
                                            "risk_area": r["risk_area"], "types_of_harm": r["types_of_harm"]}
                                           for r in dna_eval],
              "eval_helpful.jsonl": [{"id": f"helpful-eval-{i}", "prompt": t} for i, t in enumerate(eval_help)],
              "eval_xstest.jsonl": [{k: r[k] for k in ("id", "prompt", "type", "label")} for r in xs_rows]}
    return suites, eval_keys


def _rm_files(src: _Sources, caps: dict, clean) -> tuple[dict[str, list], dict]:
    """The RMs' pair files: trained on (short single-turn pairs), held out (every pair of the held-out
    prompts, multi-turn ones too; never trained on) and the gold helpfulness RM's (its own prompts), each
    held-out or gold pair tagged with its `origin` (hh_helpful, hh_harmless, do_not_answer)."""
    seed = src.seed

    def part(pairs, source, in_rm_bucket, rm_split, short=False):
        """The pairs of `source` whose prompt is in its RM bucket and then in `rm_split`, in hash order."""
        kept = [p for p in pairs if in_rm_bucket(p) and src.rm_split(source, _first_turn(p)) == rm_split
                and (_short_pair(p) or not short)]
        return _origin(_hash_order(clean(kept, _first_turn), source, lambda p: p["id"], seed), source)

    helpful = src.helpful + src.helpful_more
    in_rm = {"hh_helpful": lambda p: src.help_bucket[_first_turn(p)] == "rm",
             "hh_harmless": lambda p: src.harm_bucket[_first_turn(p)] == "rm"}
    dna_train = [r for r in src.dna if src.dna_bucket[str(r["id"])] == "train"]
    dna_train_q = [r for r in dna_train if src.rm_split("do_not_answer", r["question"]) == "train"]
    dna_held_q = [r for r in dna_train if src.rm_split("do_not_answer", r["question"]) == "heldout"]
    short = caps["rm_short_only"]  # else every pairing of a training question too, as for held-out questions
    pairings = do_not_answer_pairs(dna_train_q, **({} if short else {"max_per_question": DNA_HELDOUT_PAIRINGS}))
    dna_pairs = _cap(_origin(_hash_order(clean(pairings, _first_turn), "do_not_answer",
                                         lambda p: p["id"], seed), "do_not_answer"), caps["dna_pairs"])
    dna_held = _origin(_hash_order(clean(do_not_answer_pairs(dna_held_q, max_per_question=DNA_HELDOUT_PAIRINGS),
                                         _first_turn), "do_not_answer", lambda p: p["id"], seed), "do_not_answer")
    rm_help = _cap(part(helpful, "hh_helpful", in_rm["hh_helpful"], "train", short), caps["rm_helpful"])
    rm_safe = _cap(part(src.harmless, "hh_harmless", in_rm["hh_harmless"], "train", short), caps["rm_safety"])
    held_help = _cap(part(helpful, "hh_helpful", in_rm["hh_helpful"], "heldout"), caps["heldout_helpful"])
    held_safe = (_cap(part(src.harmless, "hh_harmless", in_rm["hh_harmless"], "heldout"),
                      caps["heldout_harmless"]) + _cap(dna_held, caps["heldout_dna"]))
    gold = _cap(part(helpful, "hh_helpful", in_rm["hh_helpful"], "gold"), caps["gold_helpful"])
    gold_held = _cap(part(helpful, "hh_helpful", in_rm["hh_helpful"], "gold_heldout"),
                     caps["gold_heldout"])
    files = {"rm_helpfulness.jsonl": rm_help, "rm_safety.jsonl": rm_safe + dna_pairs,
             "rm_helpfulness_heldout.jsonl": held_help, "rm_safety_heldout.jsonl": held_safe,
             "rm_gold_helpfulness.jsonl": gold, "rm_gold_helpfulness_heldout.jsonl": gold_held}
    return {k: [_pair_row(p) for p in v] for k, v in files.items()}, {"dna_pairs": len(dna_pairs)}


def _rs_prompts(src: _Sources, caps: dict, clean) -> tuple[list[dict], list[dict]]:
    """Rejection-sampling prompts (HH red team, Do-Not-Answer train questions with their safe
    demonstrations, HH helpful-base) and the demonstrations."""
    seed = src.seed
    red_team = clean(_hash_order([t for t, b in src.harm_bucket.items() if b == "rs"], "hh_harmless",
                                 lambda t: t, seed), lambda t: t)[:caps["rs_red_team"]]
    base_first = {_first_turn(p) for p in src.helpful}
    help_rs = clean(_hash_order([t for t in base_first if src.help_bucket[t] == "rs"], "hh_helpful",
                                lambda t: t, seed), lambda t: t)[:caps["rs_helpful"]]
    dna_train = [r for r in src.dna if src.dna_bucket[str(r["id"])] == "train"]
    demos = clean(do_not_answer_demonstrations(dna_train), lambda d: d["messages"][0]["content"])
    demos = _hash_order(demos, "do_not_answer", lambda d: d["prompt_id"], seed)[:caps["rs_dna"]]
    prompts = ([{"id": f"redteam-{i}", "prompt": t, "is_safety": True, "category": "hh-red-team"}
                for i, t in enumerate(red_team)]
               + [{"id": d["prompt_id"], "prompt": d["messages"][0]["content"], "is_safety": True,
                   "category": d["category"]} for d in demos]  # the harm type: distill's targeted preprompt
               + [{"id": f"helpful-{i}", "prompt": t, "is_safety": False, "category": "hh-helpful"}
                  for i, t in enumerate(help_rs)])
    return prompts, demos


def rm_training_pool(data_root: str | Path, seed: int = 0) -> dict[str, list[dict]]:
    """Every pair of the RM buckets' `train` prompts, per origin (multi-turn ones too), in hash order, eval
    prompts left out: what bench/rm_*.py trains on (the preset's rm_*.jsonl are its short single-turn part)."""
    src = _Sources(data_root, seed)
    _, eval_keys = _eval_suites(src, SIZES["mini"])

    def train(pairs, source, in_rm):
        kept = [p for p in pairs if in_rm(_first_turn(p)) and src.rm_split(source, _first_turn(p)) == "train"
                and normalise(_first_turn(p)) not in eval_keys]
        return _origin(_hash_order(kept, source, lambda p: p["id"], seed), source)

    dna_train = [r for r in src.dna if src.dna_bucket[str(r["id"])] == "train"
                 and src.rm_split("do_not_answer", r["question"]) == "train"]
    return {"hh_helpful": train(src.helpful + src.helpful_more, "hh_helpful", lambda t: src.help_bucket[t] == "rm"),
            "hh_harmless": train(src.harmless, "hh_harmless", lambda t: src.harm_bucket[t] == "rm"),
            "do_not_answer": train(do_not_answer_pairs(dna_train, max_per_question=DNA_HELDOUT_PAIRINGS),
                                   "do_not_answer", lambda t: normalise(t) not in eval_keys)}


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
    keep = ("id", "prompt", "chosen", "rejected", "source", "safety_label", "category", "origin")
    return {k: p[k] for k in keep if p.get(k) is not None}
