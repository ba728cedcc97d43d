"""Where RM training's tokens go: real and padded tokens per epoch for TRL-style rows (random batches, each
padded to its longest), our separate rows (length-grouped) and our shared-prompt rows (one row per pair,
length-grouped). A transformer step costs about its padded tokens, so the ratios explain bench/rm_speed.py.

    PYTHONPATH=$PWD .venv/bin/python bench/rm_tokens.py --pairs 48 --max-length 256
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HH = ROOT / ".." / "shared" / "data" / "hh-rlhf"


def padded(batches: list[list[int]], length) -> int:
    return sum(len(b) * max(length(i) for i in b) for b in batches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="harmless-base/test.jsonl.gz", help="under ../shared/data/hh-rlhf")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()

    from saferounds.data.hh import hh_pairs
    from saferounds.pipeline.gguf import ensure_converted
    from saferounds.pipeline.models import load_tokenizer
    from saferounds.reward_models.training import packed_length, pair_features, shared_prefix_length

    tok = load_tokenizer(ensure_converted("smollm2-135m", ROOT / ".bench-models")[0])
    pairs = hh_pairs(HH / a.file, source="helpfulness")[0][: a.pairs]
    f = pair_features(tok, pairs, "none", a.max_length)
    c, r = f["chosen_input_ids"], f["rejected_input_ids"]
    n, b = len(c), a.batch_size
    longest = lambda i: max(len(c[i]), len(r[i]))  # noqa: E731
    packed = lambda i: packed_length(c[i], r[i])  # noqa: E731
    shuffled = list(range(n))
    random.Random(0).shuffle(shuffled)
    by = lambda key: sorted(range(n), key=key)  # noqa: E731
    chunks = lambda order: [order[i:i + b] for i in range(0, n, b)]  # noqa: E731
    out = {
        "pairs": n, "max_length": a.max_length, "batch_size": b,
        "real_tokens_rows": sum(len(x) + len(y) for x, y in zip(c, r)),
        "real_tokens_shared_prompt": sum(packed(i) for i in range(n)),
        "shared_prefix_share": round(sum(shared_prefix_length(x, y) for x, y in zip(c, r)) / sum(map(longest, range(n))), 3),
        "padded_trl_random_rows": 2 * padded(chunks(shuffled), longest),
        "padded_ours_grouped_rows": 2 * padded(chunks(by(longest)), longest),
        "padded_ours_grouped_shared_prompt": padded(chunks(by(packed)), packed),
    }
    base = out["padded_trl_random_rows"]
    out["ratio_vs_trl"] = {k: round(base / v, 2) for k, v in out.items() if k.startswith("padded_")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
