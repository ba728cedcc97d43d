"""best_of_k, pooling across versions, tie-breaks, the min-score filter and the max-of-K curve,
against hand-computed numbers."""
import math

import pytest

from saferounds.sampling.config import RejectionSamplingConfig, temperature_for_round
from saferounds.sampling.curves import (expected_max_of_k, expected_median_of_k, expected_order_statistic,
                             max_of_k_curve, mean_max_of_k)
from saferounds.sampling.rejection import best_of_k, origin_counts, pool_candidates


def s(pid, idx, score, v=2, response=None):
    return {"prompt_id": pid, "sample_index": idx, "origin_version": v,
            "response": response or f"{pid}-{v}-{idx}", "gated_score": score}


def test_best_of_k_picks_the_highest_gated_score_per_prompt():
    cands = [s("a", 0, 0.1), s("a", 1, 0.9), s("a", 2, -0.3),
             s("b", 0, -1.0), s("b", 1, -2.0)]
    sel = best_of_k(cands)
    assert [(x["prompt_id"], x["sample_index"], x["gated_score"]) for x in sel] == [("a", 1, 0.9), ("b", 0, -1.0)]


def test_tie_break_prefers_newer_version_then_lower_index_and_ignores_input_order():
    cands = [s("a", 3, 0.5, v=1), s("a", 2, 0.5, v=2), s("a", 1, 0.5, v=2), s("a", 0, 0.2, v=2)]
    for order in (cands, cands[::-1], cands[1:] + cands[:1]):
        (best,) = best_of_k(order)
        assert (best["origin_version"], best["sample_index"]) == (2, 1)


def test_min_score_drops_prompts_whose_best_is_below():
    cands = [s("a", 0, 0.4), s("a", 1, -0.2), s("b", 0, -0.1), s("b", 1, -0.5), s("c", 0, 0.0)]
    assert [x["prompt_id"] for x in best_of_k(cands, min_score=0.0)] == ["a", "c"]
    assert [x["prompt_id"] for x in best_of_k(cands, min_score=-0.15)] == ["a", "b", "c"]
    assert best_of_k(cands, min_score=1.0) == []


def test_pooling_all_previous_current():
    current = [s("a", 0, 0.2, v=3), s("a", 1, 0.1, v=3), s("b", 0, -0.4, v=3)]
    v1_kept = [s("a", 5, 0.9, v=1), s("b", 2, 0.6, v=1)]
    # v2 re-kept v1's sample for b (same identity: dedup) and its own for a
    v2_kept = [s("a", 1, 0.3, v=2), s("b", 2, 0.6, v=1)]
    kept = {1: v1_kept, 2: v2_kept}

    all_ = pool_candidates(current, kept, "all")
    assert len(all_) == 3 + 2 + 1  # b's v1 sample appears once
    sel = {x["prompt_id"]: (x["origin_version"], x["sample_index"]) for x in best_of_k(all_)}
    assert sel == {"a": (1, 5), "b": (1, 2)}
    assert origin_counts(best_of_k(all_)) == {"v1": 2}

    prev = pool_candidates(current, kept, "previous")
    sel = {x["prompt_id"]: (x["origin_version"], x["sample_index"]) for x in best_of_k(prev)}
    assert sel == {"a": (2, 1), "b": (1, 2)}  # v1's 0.9 for a is not in v2's kept set
    assert origin_counts(best_of_k(prev)) == {"v1": 1, "v2": 1}

    cur = pool_candidates(current, kept, "current")
    assert cur == current
    assert origin_counts(best_of_k(cur)) == {"v3": 2}
    assert pool_candidates(current, {}, "all") == current
    with pytest.raises(ValueError, match="pool"):
        pool_candidates(current, kept, "everything")


def test_pool_keeps_prompts_only_earlier_versions_sampled():
    current = [s("a", 0, 0.2, v=2)]
    sel = best_of_k(pool_candidates(current, {1: [s("z", 0, -0.1, v=1)]}, "all"))
    assert [x["prompt_id"] for x in sel] == ["a", "z"]


def test_order_statistics_hand_computed():
    xs = [3.0, 1.0, 2.0]
    # k=2 subsets: {1,2},{1,3},{2,3} -> max 2,3,3 (mean 8/3); min 1,1,2 (mean 4/3)
    assert expected_max_of_k(xs, 2) == pytest.approx(8 / 3)
    assert expected_order_statistic(xs, 2, 1) == pytest.approx(4 / 3)
    assert expected_max_of_k(xs, 1) == pytest.approx(2.0)
    assert expected_max_of_k(xs, 3) == pytest.approx(3.0)
    # median of k=2 is the mean of the pair: (1.5 + 2 + 2.5) / 3 = 2
    assert expected_median_of_k(xs, 2) == pytest.approx(2.0)
    ys = [0.0, 1.0, 4.0, 10.0]
    # k=3 subsets: {0,1,4},{0,1,10},{0,4,10},{1,4,10}: medians 1,1,4,4 -> 2.5; max 4,10,10,10 -> 8.5
    assert expected_median_of_k(ys, 3) == pytest.approx(2.5)
    assert expected_max_of_k(ys, 3) == pytest.approx(8.5)
    with pytest.raises(ValueError):
        expected_max_of_k(xs, 4)


def test_max_of_k_curve_hand_computed():
    samples = [{"prompt_id": "p", "gated_logit": x} for x in (3.0, 1.0, 2.0)] + \
              [{"prompt_id": "q", "gated_logit": x} for x in (0.0, 0.0, 6.0)]
    curve = max_of_k_curve(samples)
    assert [c["k"] for c in curve] == [1, 2, 3]
    # p: max 2, 8/3, 3 ; q: max 2, (0+6+6)/3=4, 6
    assert [c["max"] for c in curve] == pytest.approx([2.0, (8 / 3 + 4) / 2, 4.5])
    assert [c["mean"] for c in curve] == pytest.approx([2.0, 2.0, 2.0])
    # median k=3: p 2, q 0 -> 1 ; k=2 median = pair mean = sample mean -> 2
    assert [c["median"] for c in curve] == pytest.approx([2.0, 2.0, 1.0])
    assert mean_max_of_k(samples, 2) == pytest.approx((8 / 3 + 4) / 2)
    assert max_of_k_curve([]) == []


def test_max_of_k_is_unbiased_against_brute_force():
    import itertools
    import random
    rng = random.Random(0)
    xs = [rng.gauss(0, 1) for _ in range(7)]
    for k in range(1, 8):
        brute = [max(c) for c in itertools.combinations(xs, k)]
        assert expected_max_of_k(xs, k) == pytest.approx(sum(brute) / len(brute))
        assert not math.isnan(expected_median_of_k(xs, k))


def test_temperature_schedule():
    assert temperature_for_round(RejectionSamplingConfig(temperature=0.7), 3) == 0.7
    sched = RejectionSamplingConfig(temperature=[0.6, 0.8, 1.1])
    assert [temperature_for_round(sched, v) for v in (1, 2, 3, 4, 9)] == [0.6, 0.8, 1.1, 1.1, 1.1]
    assert temperature_for_round(RejectionSamplingConfig(temperature="auto"), 2) is None
    with pytest.raises(ValueError, match="auto"):
        RejectionSamplingConfig(temperature="hot")
    with pytest.raises(ValueError, match="empty"):
        RejectionSamplingConfig(temperature=[])
