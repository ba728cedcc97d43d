"""eval.metrics against hand-computed numbers."""
import math

import pytest

from saferounds.core.maths import sigmoid
from saferounds.eval import metrics


def test_wilson_interval_3_of_10():
    # p=0.3, z=1.96: centre=(0.3+0.19207)/1.38415=0.35550, half=1.96*sqrt(0.021+0.0096037)/1.38415=0.24771
    lo, hi = metrics.wilson_interval(3, 10)
    assert lo == pytest.approx(0.10779, abs=1e-4)
    assert hi == pytest.approx(0.60322, abs=1e-4)


def test_wilson_interval_edges():
    lo, hi = metrics.wilson_interval(0, 10)  # 0/10: lower bound 0, upper z^2/(n+z^2)=3.8415/13.8415
    assert lo == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(0.27754, abs=1e-4)
    lo, hi = metrics.wilson_interval(10, 10)
    assert (lo, hi) == (pytest.approx(1 - 0.27754, abs=1e-4), pytest.approx(1.0))
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_violation_and_false_refusal_rates():
    v = metrics.violation_rate([True, False, False, True, False])
    assert (v["rate"], v["count"], v["n"]) == (0.4, 2, 5)
    assert v["ci95"][0] < 0.4 < v["ci95"][1]
    f = metrics.false_refusal_rate([False] * 9 + [True])
    assert f["rate"] == pytest.approx(0.1)


def test_by_category():
    out = metrics.by_category(["a", "b", "a", None], [True, False, False, True])
    assert out["a"]["rate"] == 0.5 and out["a"]["n"] == 2
    assert out["b"]["rate"] == 0.0
    assert out["uncategorised"]["count"] == 1


def test_win_rate_ties_count_half():
    w = metrics.win_rate([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.1])
    # wins: 1>0, 0.5>0.1 -> 2; ties: 1; losses: 1 -> (2 + 0.5) / 4
    assert w["rate"] == pytest.approx(0.625)
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (2, 1, 1, 4)
    with pytest.raises(ValueError):
        metrics.win_rate([1.0], [1.0, 2.0])


def test_token_f1():
    # pred tokens: the cat sat ; ref: the cat sat down -> common 3, P=1, R=3/4, F1=6/7
    assert metrics.token_f1("The cat sat.", "the cat sat down") == pytest.approx(6 / 7)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("", "") == 1.0


def test_sigmoid():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert sigmoid(-800.0) == pytest.approx(0.0)


def test_rm_accuracy_by_rating():
    rows = [{"rating": "better", "chosen_score": 1, "rejected_score": 0},
            {"rating": "better", "chosen_score": 0, "rejected_score": 1},
            {"rating": None, "chosen_score": 2, "rejected_score": 1}]
    acc = metrics.rm_accuracy_by_rating(rows)
    assert acc["better"]["rate"] == 0.5
    assert acc["unrated"]["rate"] == 1.0


def test_safety_verdicts_keep_compliance_and_harmful_content_apart():
    def rec(cat, refusal, harmful):
        return {"risk_category": cat, "refusal": refusal, "harmful": harmful}
    unsafe = [rec("a", False, True), rec("a", False, False), rec("a", True, False), rec("b", False, None),
              rec(None, True, None)]
    v = metrics.safety_verdicts(unsafe)
    assert (v["complied"]["count"], v["complied"]["n"]) == (3, 5)
    assert v["complied"]["by_category"]["a"]["count"] == 2 and v["complied"]["by_category"]["other"]["count"] == 0
    assert (v["harmful_content"]["count"], v["harmful_content"]["n"]) == (1, 3)  # only answers the harm judge read
    assert "b" not in v["harmful_content"]["by_category"]
    assert metrics.safety_verdicts([rec("a", False, None)])["harmful_content"] is None
    assert v["violation_definition"] == metrics.VIOLATION_DEFINITION
