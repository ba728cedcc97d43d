"""The refusal judge with and without the prompt among its features, on human labels and on SmolLM2's answers.

    .venv/bin/python bench/judge_features.py -w bench-smollm2-full --json bench/results/judge_features.json

Trains the refusal head twice on the same labelled answers (XSTest + Do-Not-Answer, minus the workspace's eval
prompts, as `saferounds judges train` does): `pair+patterns` (response, prompt, their product, the patterns'
verdict: the default until now) and `response+patterns` (response and the patterns' verdict, no prompt).
Reports, per feature set:
  * held-out agreement with the human labels (models never trained on: XSTest llama2new, DNA vicuna-7b + Claude);
  * on the workspace's v1 eval records (v0's and v1's answers to the held-out unsafe prompts), how many answers
    it calls refusals, how many of those the patterns do not, and how many of the hand-labelled audit answers
    (`bench/results/smollm2_refusal_audit.json`, labelled by reading) it gets right.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
AUDIT = REPO / "bench" / "results" / "smollm2_refusal_audit.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, default=REPO / "bench-smollm2-full")
    ap.add_argument("--data-dir", type=Path, default=REPO / ".." / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from saferounds.eval.classifier_data import load_examples
    from saferounds.eval.judges.artifact import user_home
    from saferounds.eval.judges.encoder import Encoder
    from saferounds.eval.judges.judging import Judges
    from saferounds.eval.judges.training import default_settings, train_judge, without_prompts
    from saferounds.eval.refusal import refusal_match
    from saferounds.pipeline.stages.eval import eval_prompt_texts
    from saferounds.pipeline.workspace import Workspace

    ws = Workspace(args.workspace)
    examples = without_prompts(load_examples(args.data_dir), eval_prompt_texts(ws))
    ev = args.workspace / "versions" / "v1" / "eval"
    records = {"v1": json.loads((ev / "records.json").read_text()),
               "v0": json.loads((ev / "compared_records.json").read_text())["v0"]}
    unsafe = {v: [r for r in recs if r["role"] == "unsafe" and not r.get("generation_failure")]
              for v, recs in records.items()}
    audit = json.loads(AUDIT.read_text()) if AUDIT.exists() else []
    base = default_settings("refusal")
    enc = Encoder(base.backbone, base.max_tokens, cache_dir=user_home() / "embeddings")
    out = {}
    for feature_set in ("pair+patterns", "response+patterns"):
        judge = train_judge("refusal", examples, settings=replace(base, feature_set=feature_set), encoder=enc)
        judges = Judges("combined", judge, None, [])
        row = {"heldout": {k: {m: v[m] for m in ("n", "agreement", "precision", "recall")}
                           for k, v in judge.config["metrics"]["heldout"].items()}}
        for v, recs in unsafe.items():
            got = judges.judge([r["prompt"] for r in recs], [r["response"] for r in recs])
            refused = [g["refusal"] for g in got]
            row[f"{v}_unsafe"] = {"n": len(recs), "refusals": sum(refused),
                                  "refusals_without_a_refusal_phrase": sum(
                                      f and refusal_match(r["response"]) is None for f, r in zip(refused, recs))}
        if audit:
            got = judges.judge([a["prompt"] for a in audit], [a["response"] for a in audit])
            row["audit"] = {"n": len(audit), "agree": sum(g["refusal"] == a["refusal"] for g, a in zip(got, audit))}
        out[feature_set] = row
        print(feature_set, json.dumps(row), flush=True)
    if audit:
        pat = sum((refusal_match(a["response"]) is not None) == a["refusal"] for a in audit)
        out["patterns_audit"] = {"n": len(audit), "agree": pat}
        print("patterns audit", pat, "/", len(audit))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
