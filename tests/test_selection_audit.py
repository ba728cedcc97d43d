"""sampling.selection_audit against a hand count on a fixture: 3 safety prompts and 2 helpful ones, K = 3."""
from __future__ import annotations

import pytest

from saferounds.sampling.selection_audit import selection_audit, summary_lines


def _s(prompt, k, safety, harmful=None, refusal=False, gated=0.0, gold=None):
    return {"prompt_id": prompt, "sample_index": k, "is_safety": safety, "harmful": harmful, "refusal": refusal,
            "gated_score": gated, "gold_score": gold}


SAMPLES = [
    # s1: two harmful, one refusal (not harmful); selection takes the refusal
    _s("s1", 0, True, True, gated=0.1), _s("s1", 1, True, True, gated=0.2), _s("s1", 2, True, False, True, 0.9),
    # s2: all harmful: no headroom; selection takes sample 1
    _s("s2", 0, True, True, gated=0.3), _s("s2", 1, True, True, gated=0.5), _s("s2", 2, True, True, gated=0.4),
    # s3: one harmless, but selection takes a harmful one
    _s("s3", 0, True, False, gated=0.2), _s("s3", 1, True, True, gated=0.6), _s("s3", 2, True, True, gated=0.1),
    # helpful prompts: h1 has a refusal that is not selected
    _s("h1", 0, False, refusal=True, gated=0.1, gold=-1.0), _s("h1", 1, False, gated=0.8, gold=1.0),
    _s("h1", 2, False, gated=0.3, gold=0.0),
    _s("h2", 0, False, gated=0.7, gold=2.0), _s("h2", 1, False, gated=0.2, gold=0.5),
    _s("h2", 2, False, gated=0.1, gold=0.5),
]
SELECTED = [{"prompt_id": p, "sample_index": k} for p, k in (("s1", 2), ("s2", 1), ("s3", 1), ("h1", 1), ("h2", 0))]


def test_selection_audit_matches_a_hand_count():
    a = selection_audit(SAMPLES, SELECTED)
    s, h = a["safety"], a["helpful"]
    assert s["prompts"] == 3 and s["all"]["samples"] == 9 and s["selected"]["samples"] == 3
    assert s["all"]["harmful"]["count"] == 7 and s["selected"]["harmful"]["count"] == 2  # s2, s3
    assert s["harmful_ratio"] == pytest.approx((2 / 3) / (7 / 9))
    assert s["all"]["refusal"]["count"] == 1 and s["selected"]["refusal"]["count"] == 1
    assert s["selected"]["gated_score_mean"] == pytest.approx((0.9 + 0.5 + 0.6) / 3)
    assert s["headroom"] == {"prompts": 3, "with_a_non_harmful_candidate": 2, "selected_non_harmful": 1}
    assert h["all"]["refusal"]["count"] == 1 and h["selected"]["refusal"]["count"] == 0
    assert h["all"]["gold_score_mean"] == pytest.approx(3.0 / 6) and h["selected"]["gold_score_mean"] == 1.5
    assert h["all"]["harmful"] is None  # helpful samples were not judged for harm here
    lines = summary_lines(a)
    assert lines[0].startswith("safety prompts (3): harmful 77.8%") and "2 of 3 prompts had a non-harmful" in lines[0]
    assert "gold RM mean 0.500 -> 1.500" in lines[1]


def test_no_safety_prompts_and_no_harm_verdicts():
    a = selection_audit([r for r in SAMPLES if not r["is_safety"]], SELECTED)
    assert a["safety"] is None and a["helpful"]["prompts"] == 2
    unjudged = [{**r, "harmful": None} for r in SAMPLES if r["is_safety"]]
    b = selection_audit(unjudged, SELECTED)
    assert b["safety"]["all"]["harmful"] is None and b["safety"]["harmful_ratio"] is None
    assert b["safety"]["headroom"]["prompts"] == 0
