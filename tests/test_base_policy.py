"""Version 0: step-0 domain pretraining and SFT on transformers.Trainer lower the loss on held-out
text, the SFT loss covers only the completion, and `saferounds pretrain` / `sft` produce a finished,
never-again-modified versions/v0."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from saferounds.data.load import load_sft, load_text
from saferounds.pipeline.training.config import TrainConfig
from saferounds.pipeline.training.sft import IGNORE_INDEX, encode_sft, encode_text, finetune, pretrain
from saferounds.pipeline.v0 import split_heldout
from saferounds.pipeline.workspace import Workspace
from saferounds.reward_models.config import ModelConfig

FAST = dict(batch_size=8, max_length=64, warmup_ratio=0.0, lr_scheduler="constant", logging_steps=1000,
            save_steps=1000)


def test_split_heldout_is_deterministic_disjoint_and_never_empty():
    items = list(range(100))
    train, held = split_heldout(items, seed=3, fraction=0.05)
    assert len(held) == 5 and len(train) == 95 and sorted(train + held) == items
    assert split_heldout(items, seed=3, fraction=0.05) == (train, held)
    assert split_heldout(items, seed=4, fraction=0.05)[1] != held
    assert split_heldout([1, 2], seed=0) in (([1], [2]), ([2], [1]))  # at least one held out
    assert split_heldout([1], seed=0) == ([1], [])


def test_sft_labels_cover_only_the_completion(tiny_models):
    from saferounds.pipeline.models import load_tokenizer

    tok = load_tokenizer(tiny_models["policy"])
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = encode_sft(tok, messages, "The capital of France is Paris.", max_length=128)
    prompt_ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    learned = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert tok.decode(learned) == "The capital of France is Paris.<|end|>\n"
    assert encode_sft(tok, messages, "Paris.", max_length=n) is None  # nothing left to learn from
    blocks = encode_text(tok, ["a b c"] * 50, max_length=16)
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and blocks[0]["labels"] == blocks[0]["input_ids"]
    assert sum(b["input_ids"].count(tok.eos_token_id) for b in blocks) == 50  # one eos per document


def test_tiny_pretrain_then_sft_lower_the_held_out_loss(tiny_models, demo_data, tmp_path):
    texts = load_text(demo_data / "pretrain.txt")
    metrics = pretrain(tiny_models["policy"], texts[:60], TrainConfig(epochs=2, learning_rate=3e-3, **FAST),
                       ModelConfig(), tmp_path / "pretrain", tmp_path / "work" / "pretrain",
                       heldout_texts=texts[-10:])
    assert metrics["steps"] > 0 and metrics["resumed_from"] is None
    # from random weights (ln 1024 = 6.9 nats) the held-out text loss drops by well over a nat
    assert metrics["heldout_loss_before"] > 6.0
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 1.0, metrics
    assert (tmp_path / "pretrain" / "model.safetensors").exists()
    assert not (tmp_path / "pretrain.tmp").exists()

    examples = load_sft(demo_data / "sft.jsonl")
    metrics = finetune(tmp_path / "pretrain", examples[:64], TrainConfig(epochs=2, learning_rate=3e-3, **FAST),
                       ModelConfig(), tmp_path / "policy", tmp_path / "work" / "sft", heldout=examples[-16:])
    assert metrics["examples"] == 64 and metrics["steps"] == 16  # 64 / 8 per step * 2 epochs
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"] - 0.3, metrics
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "policy").iterdir()}
    assert not list((tmp_path / "policy").glob("*.bin"))  # safetensors only


def small_v0_config(ws) -> None:
    """Shrink the preset's pretrain/SFT so the CLI run takes seconds on one core."""
    path = ws / "saferounds.yaml"
    data = yaml.safe_load(path.read_text())
    data["pretrain"] = dict(epochs=1, learning_rate=3e-3, batch_size=16, max_length=64, save_steps=1000)
    data["sft"] = dict(epochs=1, learning_rate=3e-3, batch_size=16, max_length=64, save_steps=1000)
    path.write_text(yaml.safe_dump(data))


def test_cli_pretrain_and_sft_produce_a_finished_v0(tiny_workspace, tiny_models, capsys, cli_main):
    small_v0_config(tiny_workspace)
    shutil.copytree(tiny_models["policy"].parent, tiny_workspace / "models" / "tiny")  # reuse the build
    ws = Workspace(tiny_workspace)
    assert cli_main(["pretrain", "-w", str(tiny_workspace)]) == 0
    assert ws.partial_versions() == [0] and ws.finished_versions() == []
    assert ws.manifest(0)["stages"]["pretrain"]["status"] == "done"
    assert cli_main(["sft", "-w", str(tiny_workspace)]) == 0
    assert "v0 done: held-out loss" in capsys.readouterr().out
    assert ws.finished_versions() == [0] and ws.partial_versions() == []
    m = ws.manifest(0)
    assert m["status"] == "complete" and m["parent"] is None
    assert {s: v["status"] for s, v in m["stages"].items()} == {"pretrain": "done", "sft": "done"}
    for stage in ("pretrain", "sft"):
        stage_metrics = m["stages"][stage]["metrics"]
        assert stage_metrics["heldout_loss_after"] < stage_metrics["heldout_loss_before"], (stage, stage_metrics)
    assert set(m["inputs"]) == {"data/pretrain.txt", "data/sft.jsonl"}
    assert (ws.version_dir(0) / "policy" / "model.safetensors").exists()
    assert (ws.version_dir(0) / "pretrain" / "model.safetensors").exists()
    assert not (ws.version_dir(0) / "work").exists()
    before = (ws.version_dir(0) / "manifest.json").read_text()
    assert cli_main(["sft", "-w", str(tiny_workspace)]) == 2  # a finished version is never modified
    assert "v0: already finished" in capsys.readouterr().err
    assert cli_main(["pretrain", "-w", str(tiny_workspace)]) == 2
    assert (ws.version_dir(0) / "manifest.json").read_text() == before
    assert cli_main(["versions", "show", "v0", "-w", str(tiny_workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v0"


def test_sft_with_no_data_listed_exits_2(tiny_workspace, capsys, cli_main):
    path = tiny_workspace / "saferounds.yaml"
    data = yaml.safe_load(path.read_text())
    data["data"]["sft"] = []
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["sft", "-w", str(tiny_workspace)]) == 2
    assert "data.sft: no files listed" in capsys.readouterr().err
    assert not (tiny_workspace / "versions").exists()  # nothing written before the input was checked


@pytest.mark.parametrize("bad_row", ['{"prompt": "q"}', '{"prompt": "q", "completion": ""}'])
def test_sft_with_a_bad_file_fails_before_writing(tiny_workspace, capsys, bad_row, cli_main):
    sft = tiny_workspace / "data" / "sft.jsonl"
    sft.write_text(sft.read_text() + bad_row + "\n")
    assert cli_main(["sft", "-w", str(tiny_workspace)]) == 2
    assert f"{sft}:301: completion: " in capsys.readouterr().err
    assert not (tiny_workspace / "versions").exists()
