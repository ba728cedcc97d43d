"""The gold helpfulness RM (issue 28 item 2, issue 27 item 3; Gao et al. 2022 proxy vs gold): trained on pairs of
prompts the proxy RMs never see, stored beside them but never among a round's RMs, it scores only after selection
(rs) and every version's held-out helpful answers (eval); eval.gold's numbers by hand; the report's sections."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from saferounds.core.errors import InputError
from saferounds.core.records import GOLD_RM_KIND
from saferounds.eval.gold import proxy_vs_gold


def _rec(i: int, proxy: float | None, suite: str = "helpful") -> dict:
    return {"suite": suite, "id": str(i), "role": "helpful", "helpfulness_score": proxy,
            "messages": [{"role": "user", "content": f"question {i}"}], "response": f"answer {i}"}


def test_proxy_vs_gold_by_hand():
    records = {"v0": [_rec(1, 0.0), _rec(2, 1.0), _rec(3, None), _rec(4, 2.0)],
               "v1": [_rec(1, 1.0), _rec(2, 3.0), _rec(3, 2.0), _rec(4, 0.0)]}
    gold = {"v0": [0.5, 0.5, 1.0, 2.0], "v1": [1.0, 0.5, 0.0, 1.0]}  # v1 vs v0: win, tie, loss, loss
    block = proxy_vs_gold(records, gold, rm="rm/gold", heldout={"accuracy": 0.7, "ci95": [0.6, 0.8], "n": 100})
    v0, v1 = block["versions"]["v0"], block["versions"]["v1"]
    assert v0["n"] == 4 and v0["proxy_mean"] == pytest.approx(1.0) and v0["gold_mean"] == pytest.approx(1.0)
    assert "gold_win_rate_vs_v0" not in v0
    assert v1["proxy_mean"] == pytest.approx(1.5) and v1["gold_mean"] == pytest.approx(0.625)  # proxy up, gold down
    win = v1["gold_win_rate_vs_v0"]
    assert (win["wins"], win["ties"], win["losses"], win["n"]) == (1, 1, 2, 4) and win["rate"] == pytest.approx(0.375)
    lo, hi = win["ci95"]
    assert 0.0 < lo < 0.375 < hi < 1.0 and hi - lo > 0.5  # four prompts: a wide interval
    assert block["ranks_better_than_chance"] and list(block["versions"]) == ["v0", "v1"]
    at_chance = proxy_vs_gold(records, gold, heldout={"accuracy": 0.55, "ci95": [0.45, 0.65], "n": 100})
    assert not at_chance["ranks_better_than_chance"]


def test_the_report_shows_proxy_vs_gold_and_ppo_steps():
    from saferounds.eval.render import to_markdown
    from saferounds.eval.report_sections import gold_section, ppo_section

    records = {"v0": [_rec(1, 0.0), _rec(2, 1.0)], "v1": [_rec(1, 1.0), _rec(2, 3.0)]}
    gold = proxy_vs_gold(records, {"v0": [0.0, 0.0], "v1": [1.0, 1.0]},
                         heldout={"accuracy": 0.52, "ci95": [0.47, 0.57], "n": 300})
    md = to_markdown(gold_section({"gold": gold}))
    assert "## Proxy vs gold helpfulness" in md and "| v1 | 2 | 2.000 | 1.000 | 100.0% [" in md
    assert "52.0% [47.0, 57.0] on 300 pairs" in md and "Gold RM at chance" in md
    ppo = {"steps": [{"step": 1, "kl": 0.0, "score": -0.5, "response_length": 8.0, "refusal_rate": 0.25},
                     {"step": 2, "kl": 2.5, "score": 0.1, "response_length": 6.5, "refusal_rate": 0.5}],
           "planned_steps": 4, "max_kl": 2.0, "beta": 0.01, "stopped_early": True}
    md = to_markdown(ppo_section({"ppo": ppo}))
    assert "stopped early after step 2 of 4: the mean KL passed ppo.max_kl 2.0" in md
    assert "| 2 | 2.500 | 0.100 | 6.5 | 50.0% |" in md
    refused = {**ppo, "max_refusal_rate": 0.4, "stop_reason": "refusal"}
    md = to_markdown(ppo_section({"ppo": refused}))
    assert "stopped early after step 2 of 4: the rollouts the helpfulness RM scored were refused more often than " \
           "ppo.max_refusal_rate 40.0%" in md and "ppo.max_kl" not in md
    assert gold_section({}) == [] and ppo_section({"ppo": None}) == []


# --- the gold RM in a workspace (tiny backbone, a few steps) ---------------------------------------

def _pairs(path: Path, prefix: str, n: int, start: int = 0) -> list[dict]:
    """n helpfulness pairs on prompts of their own: a full answer beats a curt one."""
    rows = [{"prompt": [{"role": "user", "content": f"{prefix} question number {i}: how do plants grow?"}],
             "chosen": "Plants grow from seeds using light, water and soil nutrients.", "rejected": "No idea.",
             "source": "helpfulness", "origin": "fixture"} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def _with_gold(root: Path, files: list[str], heldout: list[str], backbone: str) -> None:
    cfg_path = root / "saferounds.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["reward_models"]["gold"] = {"preferences": files, "heldout": heldout, "backbone": backbone,
                                    "learning_rate": 1e-3, "epochs": 1}
    cfg["reward_models"].update(batch_size=4, save_steps=1000, logging_steps=100, min_warmup_steps=1)
    cfg_path.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def gold_ws(tmp_path_factory, tiny_workspace_template, tiny_models):
    """A tiny workspace whose gold RM (the tiny RM backbone, fully fine-tuned) is trained as v1's rm stage does."""
    import shutil

    from saferounds.pipeline.stages.rm import train_gold
    from saferounds.pipeline.workspace import Workspace

    root = tmp_path_factory.mktemp("gold") / "ws"
    shutil.copytree(tiny_workspace_template, root)
    _pairs(root / "data" / "gold.jsonl", "gold", 12)
    _pairs(root / "data" / "gold_heldout.jsonl", "gold held-out", 4)
    _with_gold(root, ["data/gold.jsonl"], ["data/gold_heldout.jsonl"], str(tiny_models["reward_model"]))
    ws = Workspace(root)
    summary = train_gold(ws, 1, root / "work-gold")
    return ws, summary


def test_gold_pairs_on_a_proxy_prompt_are_refused(tiny_workspace, tiny_models):
    from saferounds.pipeline.stages.rm import load_gold
    from saferounds.pipeline.workspace import Workspace

    proxy = json.loads((tiny_workspace / "data" / "preferences_helpfulness.jsonl").read_text().splitlines()[7])
    rows = _pairs(tiny_workspace / "data" / "gold.jsonl", "gold", 3)
    (tiny_workspace / "data" / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [proxy]))
    _with_gold(tiny_workspace, ["data/gold.jsonl"], [], str(tiny_models["reward_model"]))
    with pytest.raises(InputError, match=r"reward_models.gold.preferences: 1 prompt\(s\) also in the proxy"):
        load_gold(Workspace(tiny_workspace))


def test_the_gold_rm_is_stored_hashed_and_never_a_round_rm(gold_ws):
    from saferounds.pipeline.stages.rm import gold_rm_path, train_gold

    ws, summary = gold_ws
    path = ws.rm_dir(GOLD_RM_KIND, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == GOLD_RM_KIND and len(manifest["inputs_sha256"]) == 64
    assert manifest["metrics"]["train_items"] == 12 and summary["heldout_n"] == 4
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0 and len(summary["heldout_ci95"]) == 2
    assert gold_rm_path(ws, 1) == path and gold_rm_path(ws, 0) is None
    assert all(GOLD_RM_KIND not in str(p) for p in ws.rm_paths().values())  # rs and PPO read these only
    mtime = (path / "manifest.json").stat().st_mtime_ns
    assert train_gold(ws, 1, ws.root / "work-gold") == summary  # reused, not retrained
    assert (path / "manifest.json").stat().st_mtime_ns == mtime
    assert path in ws._discard_targets(1)  # `round discard v1` takes it with the version


def _candidate(pid: str, k: int, origin: int, safety: bool, score: float) -> dict:
    return {"prompt_id": pid, "sample_index": k, "origin_version": origin, "is_safety": safety, "gated_score": score,
            "messages": [{"role": "user", "content": f"prompt {pid}"}], "response": f"answer {pid} {k} {origin}"}


def test_rs_scores_with_the_gold_rm_only_after_selection_and_apart(gold_ws, tmp_path):
    from saferounds.pipeline.stages.rm import gold_scores
    from saferounds.pipeline.stages.rs import _gold_after_selection, selection_digest
    from saferounds.sampling.rejection import best_of_k

    ws, _ = gold_ws
    candidates = [_candidate("h1", 0, 1, False, 0.2), _candidate("h1", 0, 2, False, 0.9),
                  _candidate("h1", 1, 2, False, 0.1), _candidate("s1", 0, 2, True, 0.5)]
    before = json.dumps(candidates, sort_keys=True)
    selected = best_of_k(candidates, "gated_score")
    ctx = SimpleNamespace(workspace=ws, version=1, dir=tmp_path)
    gold = _gold_after_selection(ctx, candidates, selected)
    assert json.dumps(candidates, sort_keys=True) == before  # no gold field joins what selection read
    written = json.loads((tmp_path / "selection_gold.json").read_text())
    assert written["scored_after_selection"] == selection_digest(selected)
    assert written["gold_rm"] == str(ws.rm_dir(GOLD_RM_KIND, 1))
    keys = [(s["origin_version"], s["prompt_id"], s["sample_index"]) for s in written["scored"]]
    assert keys == [(1, "h1", 0), (2, "h1", 0), (2, "h1", 1)]  # the helpful candidates only, v1's and v2's apart
    _, direct = gold_scores(ws, 1, [c["messages"] for c in candidates[:3]], [c["response"] for c in candidates[:3]])
    assert [gold[k] for k in keys] == pytest.approx(direct)


def test_eval_scores_every_versions_helpful_answers_with_the_gold_rm(gold_ws):
    from saferounds.pipeline.stages.eval import _gold_hook
    from saferounds.pipeline.stages.rm import gold_scores

    ws, _ = gold_ws
    records = {"v0": [_rec(1, 0.1), _rec(2, 0.2), {**_rec(3, None), "role": "unsafe"}],
               "v1": [{**_rec(1, 0.3), "response": "Plants grow from seeds using light and water."}, _rec(2, 0.4),
                      {**_rec(3, None), "role": "unsafe"}]}
    block = _gold_hook(ws, 1)(records)
    helpful = [r for v in ("v0", "v1") for r in records[v] if r["role"] == "helpful"]
    _, direct = gold_scores(ws, 1, [r["messages"] for r in helpful], [r["response"] for r in helpful])
    assert block["versions"]["v0"]["n"] == block["versions"]["v1"]["n"] == 2  # the unsafe prompt is left out
    assert block["versions"]["v0"]["gold_mean"] == pytest.approx(sum(direct[:2]) / 2)
    assert block["versions"]["v1"]["gold_mean"] == pytest.approx(sum(direct[2:]) / 2)
    win = block["versions"]["v1"]["gold_win_rate_vs_v0"]
    assert win["wins"] == (direct[2] > direct[0]) + (direct[3] > direct[1]) and win["n"] == 2
    assert block["heldout"]["n"] == 4 and block["gold_rm"] == str(ws.rm_dir(GOLD_RM_KIND, 1))
    assert _gold_hook(ws, 0) is None  # no gold RM up to v0


def test_selection_audit_gold_by_hand_with_pooled_samples_kept_apart():
    """Two helpful prompts; p1 has v1's and v2's sample 0 side by side (a pooled round): only the chosen one
    (v2's) counts as selected. Gold means over all candidates and over the chosen, and the share of prompts whose
    chosen sample beats its prompt's mean gold score."""
    from saferounds.sampling.selection_audit import selection_audit

    def s(pid, k, origin, gold, refusal=False):
        return {"prompt_id": pid, "sample_index": k, "origin_version": origin, "is_safety": False,
                "gated_score": 0.0, "refusal": refusal, "harmful": None, "gold_score": gold}
    samples = [s("p1", 0, 1, 3.0), s("p1", 0, 2, 1.0, refusal=True), s("p1", 1, 2, 2.0),
               s("p2", 0, 2, 0.0), s("p2", 1, 2, 4.0)]
    selected = [{"prompt_id": "p1", "sample_index": 0, "origin_version": 2},
                {"prompt_id": "p2", "sample_index": 1, "origin_version": 2}]
    h = selection_audit(samples, selected)["helpful"]
    assert h["selected"]["samples"] == 2 and h["selected"]["refusal"]["count"] == 1  # v2's p1 sample, not v1's
    assert h["all"]["gold_score_mean"] == pytest.approx(2.0) and h["selected"]["gold_score_mean"] == pytest.approx(2.5)
    above = h["gold_above_prompt_mean"]  # p1: 1.0 < mean 2.0; p2: 4.0 > mean 2.0
    assert (above["count"], above["n"]) == (1, 2)
