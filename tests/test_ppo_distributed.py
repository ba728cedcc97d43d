"""PPO under `accelerate launch` with 2 CPU processes (gloo): the same code, DDP-synchronised
weights on both ranks, one log, a checkpoint that resumes. Run as a script, it is the worker."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def worker(tiny_dir: str, out: str, steps: int) -> None:
    from test_ppo_loop import TRAIN, gated_score
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saferounds.pipeline.training.config import PPOConfig
    from saferounds.pipeline.training.ppo import train_ppo

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = PPOConfig(steps=steps, batch_size=8, mini_batch_size=4, rollout_batch_size=4, learning_rate=1e-3,
                    max_new_tokens=5, save_every=2)
    trained, summary = train_ppo(policy, tok, TRAIN, gated_score, cfg, work_dir=Path(out) / "work",
                                 log_path=Path(out) / "log.jsonl")
    rank = int(os.environ["RANK"])
    flat = torch.cat([p.detach().flatten() for p in trained.parameters()])
    torch.save({"params": flat, "steps": summary["steps_done"]}, Path(out) / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tiny_dir, out, steps):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    # `--cpu` makes accelerate launch run one process; --multi_gpu starts torchrun's 2 workers, and
    # with no CUDA pipeline.training.ppo.make_accelerator puts them on gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), __file__, str(tiny_dir), str(out), str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_two_process_ppo_keeps_ranks_in_sync_and_resumes(tmp_path):
    from saferounds.data.tiny import build_tiny

    tiny = build_tiny(tmp_path / "tiny")["policy"]
    launch(tiny, tmp_path, steps=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    assert torch.equal(r0["params"], r1["params"])  # DDP kept the two replicas identical
    rows = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one log, written by the main process
    assert sorted(p.name for p in (tmp_path / "work" / "step_000002").iterdir()) == \
        ["rng_0.pt", "rng_1.pt", "state.pt"]
    # resume to step 3 from the step-2 checkpoint, still in sync
    launch(tiny, tmp_path, steps=3)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 3 and torch.equal(r0["params"], r1["params"])
    assert [json.loads(l)["step"] for l in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
