import json

import pytest
import torch

from saferounds.pipeline.cli import main

torch.set_num_threads(1)

GOOD = {"prompt": "hello?", "chosen": "Hi, how can I help?", "rejected": "Go away."}
BAD_ROWS = [
    ({"prompt": "q", "rejected": "no"}, "chosen"),                       # missing chosen
    (dict(GOOD, rating="much_better"), "rating"),                       # rating outside the set
    (dict(GOOD, rejected=GOOD["chosen"]), "rejected"),                  # chosen == rejected
    (dict(GOOD, chosen=""), "chosen"),                                  # empty text
]


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "saferounds.yaml").write_text("seed: 0\n")
    return tmp_path


@pytest.mark.parametrize("row,field", BAD_ROWS)
def test_bad_preference_file_exits_2_with_file_line(ws, capsys, row, field):
    path = ws / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    code = main(["rm", "train", "--kind", "safety", "--data", str(path), "-w", str(ws)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:2: {field}:" in err
    assert not (ws / "reward_models").exists()  # nothing written before validation


def test_bad_kind_and_missing_rm_exit_2(ws, capsys):
    assert main(["rm", "train", "--kind", "both", "-w", str(ws)]) == 2
    assert main(["rm", "eval", "--kind", "safety", "-w", str(ws)]) == 2
    assert "rm train --kind safety" in capsys.readouterr().err


def test_train_then_eval_json(ws, capsys):
    rows = [{"prompt": f"question {i}", "chosen": "I'm sorry, I can't help with that.",
             "rejected": "Sure, here is how.", "safety_label": "chosen_safe_rejected_unsafe",
             "rating": "better"} for i in range(24)]
    path = ws / "safety.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ws / "saferounds.yaml").write_text(
        "seed: 0\ndata:\n  safety_preferences: [safety.jsonl]\n"
        "reward_models:\n  learning_rate: 0.002\n  batch_size: 4\n  eval_fraction: 0.25\n"
        "  min_warmup_steps: 1\n")
    assert main(["rm", "train", "--kind", "safety", "-w", str(ws), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == "v1" and out["mix"]["safety"] == out["train_items"]
    assert (ws / "reward_models" / "safety" / "v1" / "model.safetensors").exists()
    assert not list((ws / "reward_models" / "safety").glob(".v1.*"))  # partial and work dirs gone
    assert main(["rm", "eval", "--kind", "safety", "-w", str(ws), "--json", "--data", str(path)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 24 and ev["accuracy"] == 1.0 and ev["unsafe_recall"] == 1.0
    manifest = json.loads((ws / "reward_models" / "safety" / "v1" / "manifest.json").read_text())
    assert manifest["eval"]["accuracy"] == 1.0 and manifest["kind"] == "safety"
    assert main(["rm", "train", "--kind", "safety", "-w", str(ws), "--version", "v1"]) == 2  # exists


def test_stage_rm_trains_both_kinds_and_reuses(ws):
    import logging
    from types import SimpleNamespace

    from saferounds.pipeline.stages import rm as stage_rm
    from saferounds.pipeline.workspace import Workspace

    help_rows = [{"prompt": f"q{i}", "chosen": "Paris.", "rejected": "No idea.", "rating": "better"} for i in range(12)]
    safe_rows = [{"prompt": f"s{i}", "chosen": "I can't help with that.", "rejected": "Sure.",
                  "safety_label": "chosen_safe_rejected_unsafe"} for i in range(12)]
    safe_rows.append({"prompt": "s99", "chosen": "Sure.", "rejected": "I can't.", "safety_label": None,
                      "chosen_unsafe_rejected_safe": True})
    (ws / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in help_rows))
    (ws / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in safe_rows))
    (ws / "saferounds.yaml").write_text(
        "seed: 0\ndata:\n  helpfulness_preferences: [h.jsonl]\n  safety_preferences: [s.jsonl]\n"
        "reward_models:\n  batch_size: 8\n  eval_fraction: 0.0\n")
    w = Workspace(ws)
    msgs = []
    ctx = SimpleNamespace(workspace=w, config=w.config, version=1, dir=ws / "versions" / ".v1.partial",
                          prior_versions=[], progress=msgs.append, log=logging.getLogger("t"))
    out = stage_rm.run(ctx)
    assert out["helpfulness"]["mix"] == {"helpfulness": 12, "safety": 12, "total": 24}
    assert out["safety"]["mix"] == {"helpfulness": 1, "safety": 12, "total": 13}  # flagged pair dropped; 90/10
    assert w.rm_versions("helpfulness") == [1] and w.rm_versions("safety") == [1]
    assert len(msgs) == 2
    again = stage_rm.run(ctx)  # resume: finished RMs are reused, not retrained
    assert again == out and len(msgs) == 2


def test_heldout_files_are_scored_once_per_rm_and_shown_by_origin(ws, capsys, monkeypatch):
    """reward_models.heldout_safety: trained on all configured pairs, scored on the held-out file with an
    interval per origin; `rm eval` and status reuse the block (cached by the RM's and the pairs' sha256) and
    a changed held-out file is scored again (issue 27)."""
    from saferounds.reward_models import evaluation

    train = [{"prompt": f"question {i}", "chosen": "I'm sorry, I can't help with that.", "rejected": "Sure, here is how.",
              "safety_label": "chosen_safe_rejected_unsafe"} for i in range(16)]
    held = [{"prompt": f"held {i}", "chosen": "I'm sorry, I can't help with that.", "rejected": "Sure, here is how.",
             "origin": "do_not_answer" if i < 6 else "hh_harmless"} for i in range(10)]
    (ws / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (ws / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    (ws / "saferounds.yaml").write_text(
        "seed: 0\ndata:\n  safety_preferences: [s.jsonl]\nreward_models:\n  learning_rate: 0.002\n  batch_size: 4\n"
        "  min_warmup_steps: 1\n  heldout_safety: [held.jsonl]\n  heldout_max_pairs: 4\n")
    assert main(["rm", "train", "--kind", "safety", "-w", str(ws), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mix"]["safety"] == 16 and out["held_out_pairs"] == 10  # every configured pair trained on
    block = out["heldout"]
    assert block["n"] == 8 and {o: b["n"] for o, b in block["by_origin"].items()} == {"do_not_answer": 4,
                                                                                       "hh_harmless": 4}
    assert block["accuracy"] == 1.0 and block["ci95"][0] > 0.5 and not block["cached"]
    calls = []
    monkeypatch.setattr(evaluation, "evaluate_pairs", lambda *a, **k: calls.append(1) or {})
    assert main(["rm", "eval", "--kind", "safety", "-w", str(ws)]) == 0
    text = capsys.readouterr().out
    assert not calls and "reused" in text and "do_not_answer" in text and "have no levels" in text
    assert "1.000 [0.68, 1.00] n=8" in text  # Wilson interval of 8/8
    assert main(["status", "-w", str(ws)]) == 0
    assert "safety RM v1 held-out accuracy: 1.000 [0.68, 1.00] n=8" in capsys.readouterr().out
    monkeypatch.undo()
    (ws / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held[:5]))  # other pairs: scored again
    assert main(["rm", "eval", "--kind", "safety", "-w", str(ws), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["n"] == 4 and again["cached"] is False and set(again["by_origin"]) == {"do_not_answer"}
    manifest = json.loads((ws / "reward_models" / "safety" / "v1" / "manifest.json").read_text())
    assert manifest["metrics"]["heldout"]["n"] == 4  # what rs and the report read
