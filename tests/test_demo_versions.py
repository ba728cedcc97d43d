"""The demo's summary: every version v0..vN with its rates and 95% intervals (issue 28), in --json and the table."""
from saferounds.core.maths import rate_with_ci
from saferounds.pipeline.cli.demo import version_table
from saferounds.pipeline.demo import version_rows


def _metrics(version, violations, n=10, compared=None, gold=None):
    block = {"safety": {"violation": rate_with_ci(violations, n),
                        "false_refusal": {"borderline": rate_with_ci(1, 4), "helpful": rate_with_ci(0, 5)}},
             "helpfulness": {"mean_score": 0.1 * violations}}
    return {"version": version, **block, "compared": compared or {}, **({"gold": gold} if gold else {})}


def test_every_version_from_the_newest_eval_that_judged_it():
    v1 = _metrics("v1", 6, compared={"v0": _metrics("v0", 9)})
    v2 = _metrics("v2", 5, compared={"v1": _metrics("v1", 7), "v0": _metrics("v0", 8)})
    gold = {"versions": {"v3": {"gold_win_rate_vs_v0": {"rate": 0.55, "ci95": [0.4, 0.7]}}}}
    v3 = _metrics("v3", 2, compared={"v2": _metrics("v2", 4), "v0": _metrics("v0", 8)}, gold=gold)
    rows = version_rows(v3, [v1, v2, v3], 3)
    assert [r["version"] for r in rows] == ["v0", "v1", "v2", "v3"]
    # v0 and v2 as v3's eval judged them; v1 as v2's eval (the newest that compared it), v3 its own
    assert [r["judged_in"] for r in rows] == ["v3 eval", "v2 eval", "v3 eval", "v3 eval"]
    assert [r["violation"]["count"] for r in rows] == [8, 7, 4, 2]
    assert rows[3]["gold_win_rate_vs_v0"]["rate"] == 0.55 and rows[0]["gold_win_rate_vs_v0"] is None
    cells = version_table(rows)
    lo, hi = rate_with_ci(2, 10)["ci95"]
    assert cells[3][:2] == ["v3", f"20.0% [{100 * lo:.1f}, {100 * hi:.1f}]"]
    assert cells[3][5] == "55.0% [40.0, 70.0]" and cells[0][5] == ""
    assert cells[1][3] == "0.0% [0.0, 43.4]"  # 0 of 5 helpful prompts refused: Wilson upper bound 43.4%
    rows[1]["false_refusal_helpful"] = rate_with_ci(0, 0)
    assert version_table(rows)[1][3] == "n/a"  # no prompt of that role: no rate, not "0.0% [0.0, 100.0]"


def test_a_version_no_eval_judged_is_left_out():
    v2 = _metrics("v2", 3, compared={"v0": _metrics("v0", 5)})
    assert [r["version"] for r in version_rows(v2, [v2], 2)] == ["v0", "v2"]
