"""The report's RM table (issue 27): held-out accuracy with 95% intervals by origin, Table 8's rating columns only
where some pair has a level, read from the block the rm stage stored in the RM's manifest."""
from __future__ import annotations

import json


def _manifest(d, held):
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"metrics": {"heldout": held}}))
    return d


def test_report_rm_table_shows_intervals_by_origin_and_no_empty_rating_columns(tmp_path):
    from saferounds.eval.report_sections import rm_accuracy_rows
    from saferounds.eval.versions import rm_accuracy

    safety = {"n": 410, "accuracy": 249 / 410, "ci95": [0.559, 0.653],
              "by_rating": {"unrated": {"n": 410, "accuracy": 249 / 410}},
              "by_origin": {"hh_harmless": {"n": 400, "accuracy": 0.6}, "do_not_answer": {"n": 10, "accuracy": 0.9}}}
    helpful = {"n": 10, "accuracy": 0.9, "by_rating": {"better": {"n": 10, "accuracy": 0.9}},
               "by_origin": {"hh_helpful": {"n": 10, "accuracy": 0.9}}}
    paths = {"safety": _manifest(tmp_path / "safety" / "v1", safety),
             "helpfulness": _manifest(tmp_path / "helpfulness" / "v1", helpful),
             "old": _manifest(tmp_path / "old" / "v0", helpful)}  # an earlier version's RM: not this report's
    acc = rm_accuracy(paths, 1)
    assert set(acc) == {"safety", "helpfulness"}
    assert acc["safety"]["origin:hh_harmless"]["count"] == 240 and acc["safety"]["avg"]["count"] == 249
    head, rows = rm_accuracy_rows({"rm_accuracy": {"safety": acc["safety"]}})
    assert head == ["reward model", "do_not_answer", "hh_harmless", "avg"]  # HH has no rating levels
    assert rows == [["safety", "90.0% [59.6, 98.2] (n=10)", "60.0% [55.1, 64.7] (n=400)",
                     "60.7% [55.9, 65.3] (n=410)"]]
    head, rows = rm_accuracy_rows({"rm_accuracy": acc})
    assert head == ["reward model", "do_not_answer", "hh_harmless", "hh_helpful", "better", "avg"]
    assert rows[1] == ["helpfulness", "–", "–", *["90.0% [59.6, 98.2] (n=10)"] * 3]


def test_report_says_when_no_pair_has_a_rating_level():
    from saferounds.core.maths import rate_with_ci
    from saferounds.eval.render import to_markdown
    from saferounds.eval.report_sections import rm_accuracy_section

    unrated = {"rm_accuracy": {"safety": {"origin:hh_harmless": rate_with_ci(240, 400), "avg": rate_with_ci(240, 400)}}}
    md = to_markdown([rm_accuracy_section(unrated)])
    assert "60.0% [55.1, 64.7] (n=400)" in md and "have none" in md
    rated = {"rm_accuracy": {"helpfulness": {"better": rate_with_ci(9, 10), "avg": rate_with_ci(9, 10)}}}
    md = to_markdown([rm_accuracy_section(rated)])
    assert "| reward model | better | avg |" in md and "have none" not in md
