"""Hand-checked PPO maths on a three-token response (numbers worked out on paper in the comments)."""
import math

import pytest
import torch

from saferounds.core.maths import whiten
from saferounds.pipeline.training.ppo_math import entropy_of, gae, kl_penalised_rewards, logprobs_of, policy_loss, value_loss

torch.set_num_threads(1)
T = torch.tensor


def test_kl_penalised_reward_three_tokens():
    # kl = logp - ref = [0.5, 0, 0.5]; reward = -0.1*kl, +score 1.0 on the last token
    rewards, kl = kl_penalised_rewards(T([1.0]), T([[-1.0, -2.0, -0.5]]), T([[-1.5, -2.0, -1.0]]),
                                       T([[1.0, 1.0, 1.0]]), beta=0.1)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 0.95])


def test_kl_penalised_reward_puts_score_on_last_real_token():
    rewards, kl = kl_penalised_rewards(T([2.0]), T([[-1.0, -1.0, -9.0]]), T([[-1.0, -1.2, -1.0]]),
                                       T([[1.0, 1.0, 0.0]]), beta=0.5)
    # t1: -0.5*0.2 + 2 = 1.9 ; t2 is padding: nothing, kl masked
    assert rewards[0].tolist() == pytest.approx([0.0, 1.9, 0.0])
    assert kl[0].tolist() == pytest.approx([0.0, 0.2, 0.0])


def test_gae_three_tokens():
    # gamma 1, lambda 0.5, V = [0.2, 0.4, 0.6], r = [-0.05, 0, 0.95]
    # d2 = 0.95 - 0.6 = 0.35                 A2 = 0.35
    # d1 = 0 + 0.6 - 0.4 = 0.2               A1 = 0.2 + 0.5*0.35 = 0.375
    # d0 = -0.05 + 0.4 - 0.2 = 0.15          A0 = 0.15 + 0.5*0.375 = 0.3375
    adv, ret = gae(T([[-0.05, 0.0, 0.95]]), T([[0.2, 0.4, 0.6]]), T([[1.0, 1.0, 1.0]]), 1.0, 0.5)
    assert adv[0].tolist() == pytest.approx([0.3375, 0.375, 0.35])
    assert ret[0].tolist() == pytest.approx([0.5375, 0.775, 0.95])


def test_gae_discount_and_padding():
    # gamma 0.5, lambda 1, mask [1, 1, 0]: the value at the padded step is not bootstrapped from
    # d1 = 1 - 0.4 = 0.6 ; d0 = 0 + 0.5*0.4 - 0.2 = 0.0 ; A0 = 0 + 0.5*0.6 = 0.3
    adv, ret = gae(T([[0.0, 1.0, 7.0]]), T([[0.2, 0.4, 5.0]]), T([[1.0, 1.0, 0.0]]), 0.5, 1.0)
    assert adv[0].tolist() == pytest.approx([0.3, 0.6, 0.0])
    assert ret[0].tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_clipped_policy_loss_three_tokens():
    # ratio = [1, 1.5, 0.5], A = [1, 1, -1], clip 0.2
    # t0: max(-1, -1) = -1 ; t1: max(-1.5, -1.2) = -1.2 (clipped) ; t2: max(0.5, 0.8) = 0.8 (clipped)
    old = T([[-1.0, -1.0, -1.0]])
    new = old + T([[0.0, math.log(1.5), math.log(0.5)]])
    loss, stats = policy_loss(new, old, T([[1.0, 1.0, -1.0]]), T([[1.0, 1.0, 1.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.4 / 3)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    # k3 = (r - 1) - log r = [0, 0.5 - log 1.5, -0.5 + log 2]
    assert stats["approx_kl"].item() == pytest.approx((0.5 - math.log(1.5) - 0.5 + math.log(2)) / 3)


def test_clipped_policy_loss_gradient_is_zero_where_clipped():
    old = T([[-1.0, -1.0]])
    new = (old + T([[math.log(1.5), 0.0]])).requires_grad_()
    loss, _ = policy_loss(new, old, T([[1.0, 1.0]]), T([[1.0, 1.0]]), 0.2)
    loss.backward()
    assert new.grad[0].tolist() == pytest.approx([0.0, -0.5])  # d(-A r)/dlogp = -A r / n = -1/2


def test_clipped_value_loss_three_tokens():
    # V_old = [0.2, 0.4, 0.6], V = [0.5, 0.0, 1.0], R = [0.5375, 0.775, 0.95], clip 0.2
    # clipped V = [0.4, 0.2, 0.8]; per token max of squared errors:
    # t0 max(0.00140625, 0.01890625) ; t1 max(0.600625, 0.330625) ; t2 max(0.0025, 0.0225)
    loss, stats = value_loss(T([[0.5, 0.0, 1.0]]), T([[0.2, 0.4, 0.6]]), T([[0.5375, 0.775, 0.95]]),
                             T([[1.0, 1.0, 1.0]]), 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.01890625 + 0.600625 + 0.0225) / 3)
    assert stats["value_clip_frac"].item() == pytest.approx(2 / 3)


def test_whiten_masked():
    x = T([[1.0, 3.0, 100.0]])
    out = whiten(x, T([[1.0, 1.0, 0.0]]))
    assert out[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)  # mean 2, std 1; padding 0


def test_logprobs_and_entropy():
    logits = T([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert logprobs_of(logits, T([[1]])).item() == pytest.approx(math.log(0.75))
    assert entropy_of(logits).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
