"""`saferounds ppo`: runs PPO from a policy directory with the workspace's newest RMs; bad input exits 2."""
import json
import shutil

import pytest
import torch

from saferounds.pipeline.cli import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from saferounds.data.tiny import build_tiny
    from test_ppo_stage import workspace

    root = tmp_path_factory.mktemp("ws")
    paths = build_tiny(root / "tiny")
    ws = workspace(root)
    for kind in ("helpfulness", "safety"):
        shutil.copytree(paths["reward_model"], ws.rm_dir(kind, 1))
    return ws, paths


def test_ppo_command_writes_policy_and_log(ws, capsys):
    ws, paths = ws
    out = ws.root / "ppo-exp"
    rc = main(["ppo", "--out", str(out), "--policy", str(paths["policy"]), "--steps", "2",
               "--set", "ppo.beta=0.02", "-w", str(ws.root), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ppo_steps"] == 2 and result["policy"] == str(out / "ppo_policy")
    assert (out / "ppo_policy" / "model.safetensors").exists()
    assert len((out / "ppo_log.jsonl").read_text().splitlines()) == 2


def test_bad_override_and_missing_policy_exit_2(ws, capsys):
    ws, paths = ws
    assert main(["ppo", "--out", str(ws.root / "x"), "--policy", str(paths["policy"]),
                 "--set", "ppo.clip_ratio=-1", "-w", str(ws.root)]) == 2
    assert "ppo.clip_ratio" in capsys.readouterr().err
    assert main(["ppo", "--out", str(ws.root / "x"), "-w", str(ws.root)]) == 2  # no finished version yet
    assert "--policy" in capsys.readouterr().err
