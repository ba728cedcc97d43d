"""Answers of SmolLM2-135M-Instruct to prompts outside the eval suites, for labelling by reading (issue 26).

What this script does and does not do:
  * `generate` picks prompts that no eval suite of the smollm2 preset holds and writes SmolLM2's answers to
    them (bench/results/smollm2_answers.jsonl): unsafe prompts from Do-Not-Answer's *training* questions
    (data.public bucket "train") and from HH-RLHF red-team first turns (bucket "rm"/"rs"), safe prompts from
    HH-RLHF helpful first turns outside the "eval" bucket. XSTest is not used: the `full` preset evaluates all
    450 of its prompts. Each prompt is answered once, under one of four conditions: greedy or sampled
    (T = 0.8, top-p 0.95, as rejection sampling draws), without or with the generic safety system prompt
    (sampling.config.GENERIC_PREPROMPT, which is what gets refusals out of this model); 48 new tokens.
  * The LABELS ARE NOT MADE BY THIS SCRIPT. Every answer was read and labelled by hand (helper H, session of
    issue 26) following /work/shared/LABELLING.md: refusal, harmful, off_topic, note. The labels live in
    bench/results/smollm2_labels.jsonl; `merge` joins them with the answers into the shipped fixture
    tests/data/smollm2_labelled.jsonl (bench/judge_smollm2.py then adds the recorded judge probabilities).
  * `audit` converts the 60-answer refusal audit (bench/results/smollm2_refusal_audit.json, refusal labels
    only, also labelled by reading) into tests/data/smollm2_refusal_audit.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_smollm2.py generate      # ~5 min on one core
    .venv/bin/python bench/label_smollm2.py merge
    .venv/bin/python bench/label_smollm2.py audit
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = ROOT / "bench/results/smollm2_answers.jsonl"
LABELS = ROOT / "bench/results/smollm2_labels.jsonl"
FIXTURE = ROOT / "tests/data/smollm2_labelled.jsonl"
AUDIT_JSON = ROOT / "bench/results/smollm2_refusal_audit.json"
AUDIT_FIXTURE = ROOT / "tests/data/smollm2_refusal_audit.jsonl"
MAX_NEW_TOKENS = 48
# (source, system prompt?, decoding, number of prompts): each prompt is used once, under one condition
PLAN = [("dna", False, "greedy", 24), ("dna", False, "sampled", 24), ("dna", True, "greedy", 12),
        ("dna", True, "sampled", 12),
        ("redteam", False, "greedy", 16), ("redteam", False, "sampled", 16), ("redteam", True, "greedy", 8),
        ("redteam", True, "sampled", 8),
        ("helpful", False, "greedy", 14), ("helpful", False, "sampled", 14), ("helpful", True, "greedy", 6),
        ("helpful", True, "sampled", 6)]
SALT = "issue26-labelled"


def _order(items: list[str]) -> list[str]:
    return sorted(items, key=lambda t: hashlib.sha256(f"{SALT}|{t}".encode()).hexdigest())


def pick_prompts(data_root: Path) -> dict[str, list[str]]:
    """Prompts of each source that the smollm2 preset never evaluates on, in a fixed hash order."""
    from saferounds.core.io import read_rows
    from saferounds.core.records import normalise_prompt
    from saferounds.data.dna import dna_rows
    from saferounds.data.hh import hh_pairs
    from saferounds.data.public import bucket
    from saferounds.data.sources import source_paths

    paths = source_paths(data_root)
    dna = [row for _, row in dna_rows(paths["do_not_answer"])]
    helpful, _ = hh_pairs(paths["hh_helpful"], "helpfulness")
    harmless, _ = hh_pairs(paths["hh_harmless"], "safety")
    xstest = [row for _, row in read_rows(paths["xstest"])]
    eval_keys = {normalise_prompt(r["question"]) for r in dna if bucket("do_not_answer", r["question"]) == "eval"}
    eval_keys |= {normalise_prompt(p["prompt"][0]["content"]) for p in helpful
                  if bucket("hh_helpful", p["prompt"][0]["content"]) == "eval"}
    eval_keys |= {normalise_prompt(r["prompt"]) for r in xstest}

    def usable(texts, source, buckets):
        keep = {t for t in texts if 12 <= len(t) <= 240 and normalise_prompt(t) not in eval_keys
                and bucket(source, t) in buckets}
        return _order(sorted(keep))

    return {"dna": usable([r["question"] for r in dna], "do_not_answer", {"train"}),
            "redteam": usable([p["prompt"][0]["content"] for p in harmless], "hh_harmless", {"rm", "rs"}),
            "helpful": usable([p["prompt"][0]["content"] for p in helpful], "hh_helpful", {"rm", "rs"})}


def jobs(data_root: Path) -> list[dict]:
    pools, taken, out = pick_prompts(data_root), {}, []
    for source, system, decoding, n in PLAN:
        start = taken.get(source, 0)
        for i, prompt in enumerate(pools[source][start:start + n]):
            out.append({"id": f"{source}-{'sys' if system else 'nosys'}-{decoding}-{i}", "source": source,
                        "unsafe": source != "helpful", "system_prompt": system, "decoding": decoding,
                        "prompt": prompt})
        taken[source] = start + n
    return out


def load_model():
    """SmolLM2-135M-Instruct from the pip package's GGUF, dequantised to fp32 (as pipeline.gguf reads it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saferounds.pipeline.gguf import locate, require_reader

    require_reader()
    path = locate("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, model


def answer(tok, model, rows: list[dict], sampled: bool, seed: int) -> list[str]:
    import torch

    from saferounds.sampling.config import GENERIC_PREPROMPT

    texts = []
    for r in rows:
        messages = ([{"role": "system", "content": GENERIC_PREPROMPT}] if r["system_prompt"] else []) \
            + [{"role": "user", "content": r["prompt"]}]
        texts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    enc = tok(texts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=sampled, pad_token_id=tok.pad_token_id,
                             **({"temperature": 0.8, "top_p": 0.95} if sampled else {}))
    return [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]


def generate(data_root: Path, batch: int = 8) -> None:
    """Answers every planned prompt, appending each batch to ANSWERS (a rerun resumes where it stopped)."""
    import torch

    torch.set_num_threads(1)
    done = {json.loads(l)["id"] for l in ANSWERS.read_text().splitlines() if l.strip()} if ANSWERS.exists() else set()
    todo = jobs(data_root)
    tok, model = load_model()
    t0 = time.time()
    for i in range(0, len(todo), batch):
        rows = [r for r in todo[i:i + batch] if r["id"] not in done]
        groups = {}
        for r in rows:
            groups.setdefault(r["decoding"], []).append(r)
        for decoding, group in groups.items():
            for r, text in zip(group, answer(tok, model, group, decoding == "sampled", seed=i)):
                r["response"] = text
        with ANSWERS.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{i + len(todo[i:i + batch])}/{len(todo)} answers, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"{ANSWERS}: {len(todo)} answers in {time.time() - t0:.0f} s")


def merge() -> None:
    """answers + hand labels -> the fixture (keeps judge fields already recorded in the fixture)."""
    answers = [json.loads(l) for l in ANSWERS.read_text().splitlines() if l.strip()]
    labels = {d["id"]: d for d in (json.loads(l) for l in LABELS.read_text().splitlines() if l.strip())}
    missing = [a["id"] for a in answers if a["id"] not in labels]
    if missing:
        raise SystemExit(f"{LABELS}: no label for {len(missing)} answers, e.g. {missing[:3]}")
    old = {}
    if FIXTURE.exists():
        old = {d["id"]: d for d in (json.loads(l) for l in FIXTURE.read_text().splitlines() if l.strip())}
    rows = []
    for a in answers:
        lab = labels[a["id"]]
        row = {**a, "model": "SmolLM2-135M-Instruct (v0)", "refusal": bool(lab["refusal"]),
               "harmful": bool(lab["harmful"]), "off_topic": bool(lab["off_topic"]), "note": lab.get("note", "")}
        row.update({k: v for k, v in old.get(a["id"], {}).items() if k.startswith("judge_")})
        rows.append(row)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} labelled answers to {FIXTURE}")


def audit() -> None:
    rows = json.loads(AUDIT_JSON.read_text())
    AUDIT_FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    AUDIT_FIXTURE.write_text("".join(json.dumps({**r, "id": f"{r['version']}-{r['suite']}-{r['id']}"}) + "\n"
                                     for r in rows))
    print(f"wrote {len(rows)} audit answers to {AUDIT_FIXTURE}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["generate", "merge", "audit"])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    args = ap.parse_args()
    {"generate": lambda: generate(args.data), "merge": merge, "audit": audit}[args.action]()


if __name__ == "__main__":
    main()
