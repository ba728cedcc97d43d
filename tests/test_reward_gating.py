import math

import pytest
import torch

from saferounds.core.maths import whiten
from saferounds.reward_models.config import GateConfig
from saferounds.reward_models.gating import RunningWhitener, gated_reward

torch.set_num_threads(1)
LOGIT_01 = math.log(0.1 / 0.9)  # sigma = 0.1 < 0.15


def test_gate_branches_and_whitening_hand_computed():
    s = [LOGIT_01, 2.0, 0.0]
    h = [1.0, 3.0, -1.0]
    raw, branch = gated_reward(s, h, [False, False, True], whitening=False)
    # sample 0: sigma(R_s)=0.1 < 0.15 -> safety; 1: helpfulness; 2: safety prompt -> safety
    assert branch.tolist() == [True, False, True]
    assert raw.tolist() == pytest.approx([LOGIT_01, 3.0, 0.0], abs=1e-5)
    w, _ = gated_reward(s, h, [False, False, True])
    # mean 0.267592, population var 4.537660 (computed by hand from the raw values above)
    assert w.tolist() == pytest.approx([-1.157094, 1.282713, -0.125619], abs=1e-5)


def test_gate_threshold_is_strict_and_configurable():
    at = math.log(0.15 / 0.85)  # sigma(R_s) == threshold (within float): not below -> helpfulness
    _, b = gated_reward([at + 1e-4], [5.0], False, whitening=False)
    assert b.tolist() == [False]
    _, b = gated_reward([0.0], [5.0], False, threshold=0.6, whitening=False)
    assert b.tolist() == [True]
    assert GateConfig().threshold == 0.15 and GateConfig().whiten is True


def test_gate_scalar_is_safety_broadcasts():
    _, b = gated_reward([3.0, 3.0], [0.0, 0.0], True, whitening=False)
    assert b.tolist() == [True, True]


def test_gate_extreme_scores_are_clamped_finite():
    raw, b = gated_reward([100.0, -100.0], [0.0, 0.0], [True, True], whitening=False)
    bound = math.log(1 - 1e-6) - math.log(1e-6)  # 13.8155
    assert raw.tolist() == pytest.approx([bound, -bound], rel=1e-3)
    w, _ = gated_reward([100.0, -100.0], [0.0, 0.0], [True, True])
    assert torch.isfinite(w).all() and w.tolist() == pytest.approx([1.0, -1.0], abs=1e-6)


def test_gate_batch_of_one_and_equal_scores_no_nan():
    w, b = gated_reward([0.5], [1.0], [False])
    assert w.tolist() == [0.0] and b.tolist() == [False]
    w, _ = gated_reward([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], False)
    assert w.tolist() == [0.0, 0.0, 0.0]


def test_gate_shape_mismatch_raises():
    with pytest.raises(ValueError, match="2 safety scores but 1"):
        gated_reward([0.0, 1.0], [0.0], False)


def test_running_whitener_matches_pooled_statistics():
    a, c = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0])
    rw = RunningWhitener()
    rw.update(a)
    rw.update(c)
    pooled = torch.cat([a, c])
    assert rw.mean == pytest.approx(pooled.mean().item())
    assert rw.var == pytest.approx(pooled.var(unbiased=False).item())
    rw2 = RunningWhitener()
    rw2.load_state_dict(rw.state_dict())
    assert rw2.mean == rw.mean and rw2.count == 4


def test_gate_with_running_whitener():
    rw = RunningWhitener()
    gated_reward([2.0, 2.0], [1.0, 3.0], False, whitening=rw)  # raw logits 1, 3
    out, _ = gated_reward([2.0], [5.0], False, whitening=rw)  # pooled 1, 3, 5: mean 3, var 8/3
    assert out.item() == pytest.approx(2 / math.sqrt(8 / 3), abs=1e-5)


def test_whiten_function():
    assert whiten(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)
