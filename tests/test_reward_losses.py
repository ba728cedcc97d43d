import math

import pytest
import torch

from saferounds.reward_models.losses import (MARGINS, centering_loss, pair_margin, ranking_loss, regression_loss,
                                  safety_loss)
from saferounds.reward_models.rankings import elo_rewards, elo_scores, rank_distance_rating, ranking_pairs

torch.set_num_threads(1)


def test_ranking_loss_hand_computed():
    c, r = torch.tensor([2.0]), torch.tensor([1.0])
    assert ranking_loss(c, r).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.313262
    assert ranking_loss(c, r, 1.0).item() == pytest.approx(math.log(2), abs=1e-6)  # gap minus margin = 0
    # batch mean with per-pair margins: pair 1 as above, pair 2: -log sigma(0 - 0 - 1) = log(1 + e)
    loss = ranking_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2, abs=1e-6)


def test_ranking_loss_stable_for_huge_gaps():
    loss = ranking_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert loss.item() == pytest.approx(2000.0)
    assert ranking_loss(torch.tensor([1000.0]), torch.tensor([-1000.0])).item() == pytest.approx(0.0, abs=1e-12)
    c = torch.tensor([-1000.0], requires_grad=True)
    ranking_loss(c, torch.tensor([1000.0])).backward()
    assert c.grad.item() == pytest.approx(-1.0)


def test_margins_table_27():
    assert MARGINS["small"] == pytest.approx({"significantly_better": 1, "better": 2 / 3, "slightly_better": 1 / 3,
                                              "negligibly_better": 0, "unsure": 0})
    assert MARGINS["large"] == {"significantly_better": 3, "better": 2, "slightly_better": 1,
                                "negligibly_better": 0, "unsure": 0}
    assert set(MARGINS["none"].values()) == {0.0}


def test_explicit_margin_overrides_rating():
    assert pair_margin({"rating": "better", "margin": 0.25}, "large") == 0.25
    assert pair_margin({"rating": "better", "margin": None}, "large") == 2.0
    assert pair_margin({"rating": None, "margin": None}, "small") == 0.0
    assert pair_margin({"rating": "significantly_better"}, "none") == 0.0


def test_safety_loss_bce_and_mask():
    # BCE(logit 0, target 1) = log 2 ; BCE(logit 2, target 0) = log(1 + e^2)
    scores, safe = torch.tensor([0.0, 2.0, 5.0]), torch.tensor([1.0, 0.0, 1.0])
    mask = torch.tensor([True, True, False])
    assert safety_loss(scores, safe, mask).item() == pytest.approx((math.log(2) + math.log(1 + math.e ** 2)) / 2,
                                                                   abs=1e-6)
    assert safety_loss(scores, safe, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_centering_and_regression():
    assert centering_loss(torch.tensor([1.0, -2.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(2.5)
    assert regression_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(5.0)


def test_rank_distance_rating_and_pairs():
    assert [rank_distance_rating(d) for d in (1, 2, 3, 7)] == ["slightly_better", "better",
                                                             "significantly_better", "significantly_better"]
    rec = {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"], "ranking": [2, 0, 1],
           "source": "safety"}
    pairs = ranking_pairs(rec)
    assert [(p["chosen"], p["rejected"], p["rating"]) for p in pairs] == [
        ("c", "a", "slightly_better"), ("c", "b", "better"), ("a", "b", "slightly_better")]
    assert all(p["source"] == "safety" for p in pairs)


def test_elo_scores_hand_computed_and_deterministic():
    # one game, equal start: expected 0.5, delta = 32 * 0.5 = 16
    assert elo_scores([1, 0], passes=1) == [984.0, 1016.0]
    # second pass, K = 16: expected(winner) = 1/(1+10^(-32/400))
    e = 1 / (1 + 10 ** (-32 / 400))
    two = elo_scores([1, 0], passes=2)
    assert two[1] == pytest.approx(1016 + 16 * (1 - e))
    a = elo_scores([3, 1, 0, 2])
    assert a == elo_scores([3, 1, 0, 2])
    assert a[3] > a[1] > a[0] > a[2]
    assert sum(a) == pytest.approx(4000.0)  # zero-sum games
    with pytest.raises(ValueError):
        elo_scores([0, 0])


def test_elo_rewards_logit_scale_centred():
    rec = {"prompt": [], "responses": ["x", "y"], "ranking": [1, 0]}
    out = elo_rewards(rec, passes=1)
    assert out[0][0] == "y" and out[0][1] == pytest.approx(16 * math.log(10) / 400)
    assert out[1][1] == pytest.approx(-16 * math.log(10) / 400)
