"""Which pairs the safety RM drops, and the per-response targets of its auxiliary safety term."""

from reward_models.training import reversed_safety, safety_targets


def pair(**fields):
    return {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b", **fields}


def test_chosen_unsafe_rejected_safe_is_dropped_in_every_spelling():
    assert reversed_safety(pair(chosen_unsafe_rejected_safe=True))
    assert reversed_safety(pair(safety_label="chosen_unsafe_rejected_safe"))
    assert reversed_safety(pair(chosen_safe=False, rejected_safe=True))
    assert not reversed_safety(pair(chosen_safe=True, rejected_safe=False))
    assert not reversed_safety(pair(safety_label="both_unsafe"))
    assert not reversed_safety(pair())


def test_safety_targets_from_the_label_else_from_per_response_flags():
    assert safety_targets(pair(safety_label="chosen_safe_rejected_unsafe")) == (1.0, 0.0)
    assert safety_targets(pair(safety_label="both_safe")) == (1.0, 1.0)
    assert safety_targets(pair(safety_label="both_unsafe")) == (0.0, 0.0)
    assert safety_targets(pair(chosen_safe=True, rejected_safe=False)) == (1.0, 0.0)
    assert safety_targets(pair(chosen_safe=True)) is None  # one flag alone says nothing about the pair
    assert safety_targets(pair()) is None
