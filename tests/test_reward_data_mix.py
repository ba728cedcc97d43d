"""Which pairs the safety RM drops, and the per-response targets of its auxiliary safety term."""

from saferounds.reward_models.training import reversed_safety, safety_targets


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


def test_the_rm_stage_trains_on_pairs_the_label_stage_left_in_earlier_versions(tiny_workspace):
    """RLAIF -> RM: a finished version's ai_preferences.jsonl (written by pipeline.stages.label) joins the
    next rounds' reward-model data, with its per-response safety flags."""
    import json

    from saferounds.pipeline.stages.label import OUTPUT
    from saferounds.pipeline.stages.rm import load_rm_records
    from saferounds.pipeline.workspace import Workspace

    ws = Workspace(tiny_workspace)
    human = load_rm_records(ws)
    v1 = ws.version_dir(1)
    v1.mkdir(parents=True)
    ai = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "I can't help with that.",
           "rejected": f"Sure, step {i}.", "rating": "better", "safety_label": None, "chosen_safe": True,
           "rejected_safe": False, "source": "safety", "rationale": "B complies"} for i in range(3)]
    (v1 / OUTPUT).write_text("".join(json.dumps(r) + "\n" for r in ai))
    records = load_rm_records(ws, [v1])
    assert len(records) == len(human) + 3
    added = records[-3:]
    assert [safety_targets(r) for r in added] == [(1.0, 0.0)] * 3 and not any(map(reversed_safety, added))
