"""The command line's basics: init, status, versions show, exit codes (0 ok, 1 failure, 2 bad input)."""

from __future__ import annotations

import json

import pytest

from saferounds.pipeline.config import CONFIG_NAME, load_config
from saferounds.pipeline.workspace import Workspace


def make_version(ws: Workspace, n: int, finish: bool = True) -> None:
    ws.begin_version(n, n - 1 if n else None, ["rs", "eval"], [])
    ws.set_stage(n, "rs", status="done", seconds=2.5)
    ws.update_manifest(n, timings={"rs": 2.5},
                       metrics={"eval": {"safety": {"violation_rate": 0.25, "false_refusal_rate": 0.1},
                                         "helpfulness": {"mean_score": 0.5}}})
    if finish:
        ws.finish_version(n)


def test_init_creates_a_valid_workspace_and_refuses_to_overwrite(tmp_path, capsys, cli_main):
    ws = tmp_path / "new"
    assert cli_main(["init", str(ws), "--preset", "tiny"]) == 0
    assert f"created {ws / CONFIG_NAME}" in capsys.readouterr().out.replace("\n", "")
    cfg = load_config(ws / CONFIG_NAME)
    assert cfg.model.policy == "tiny" and cfg.rounds.max_version == 3
    assert all((ws / f).exists() for f in cfg.data.sft + cfg.data.prompts + cfg.data.rankings)
    (ws / CONFIG_NAME).write_text((ws / CONFIG_NAME).read_text() + "# my edits\n")
    assert cli_main(["init", str(ws)]) == 2
    assert capsys.readouterr().err == f"error: {ws / CONFIG_NAME}: already exists; pass --force to overwrite it\n"
    assert (ws / CONFIG_NAME).read_text().endswith("# my edits\n")  # untouched
    assert cli_main(["init", str(ws), "--force"]) == 0
    assert not (ws / CONFIG_NAME).read_text().endswith("# my edits\n")


def test_init_with_an_unknown_preset_exits_2_and_writes_nothing(tmp_path, capsys, cli_main):
    assert cli_main(["init", str(tmp_path / "x"), "--preset", "gpt5"]) == 2
    assert "--preset: expected one of tiny, smollm2, llama2-7b, got 'gpt5'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_llama2_preset_writes_a_config_without_demo_data(tmp_path, cli_main):
    assert cli_main(["init", str(tmp_path / "big"), "--preset", "llama2-7b"]) == 0
    cfg = load_config(tmp_path / "big" / CONFIG_NAME)
    assert cfg.model.policy != "tiny" and not (tmp_path / "big" / "data").exists()


def test_status_json_lists_finished_and_running_versions(tiny_workspace, capsys, cli_main):
    ws = Workspace(tiny_workspace)
    assert cli_main(["status", "-w", str(tiny_workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"workspace": str(ws.root), "versions": [],
                                                   "runs": str(ws.root / "runs"), "logs": str(ws.root / "logs"),
                                                   "reward_models": []}  # no RM trained yet: no held-out lines
    make_version(ws, 0)
    make_version(ws, 1, finish=False)
    assert cli_main(["status", "-w", str(tiny_workspace), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["versions"]  # nobody holds the lock: v1's run died
    assert [(r["version"], r["status"]) for r in rows] == [("v0", "complete"), ("v1", "died")]
    with ws.lock():  # a live run holds the workspace lock
        assert cli_main(["status", "-w", str(tiny_workspace), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["versions"]
        assert cli_main(["status", "-w", str(tiny_workspace)]) == 0  # the table
        table_out = capsys.readouterr().out
    assert [(r["version"], r["parent"], r["status"]) for r in rows] == [("v0", None, "complete"),
                                                                        ("v1", "v0", "running")]
    assert rows[0]["stages"] == [{"stage": "rs", "status": "done"}, {"stage": "eval", "status": "pending"}]  # plan order
    assert rows[0]["seconds"] == 2.5
    assert rows[0]["headline"] == {"violation_rate": 0.25, "false_refusal_rate": 0.1, "helpfulness": 0.5}
    out = table_out
    assert "v0" in out and "v1" in out and "25.0" in out and "running" in out
    assert "judges: v0 unaudited, v1 unaudited" in out and all(r["judges"] == "unaudited" for r in rows)


def test_status_outside_a_workspace_exits_2(tmp_path, capsys, cli_main):
    assert cli_main(["status", "-w", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a saferounds workspace (no {CONFIG_NAME})" in capsys.readouterr().err


def test_versions_show(tiny_workspace, capsys, cli_main):
    ws = Workspace(tiny_workspace)
    make_version(ws, 0)
    make_version(ws, 1)
    make_version(ws, 2, finish=False)
    assert cli_main(["versions", "show", "v9", "-w", str(tiny_workspace)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: v9: no such version in {ws.versions_dir} (finished: v0, v1; unfinished: v2)\n"
    assert cli_main(["versions", "show", "2", "-w", str(tiny_workspace), "--json"]) == 0  # the unfinished one
    m = json.loads(capsys.readouterr().out)
    assert (m["version"], m["parent"], m["status"]) == ("v2", "v1", "running")
    assert cli_main(["versions", "show", "v1", "-w", str(tiny_workspace)]) == 0
    assert "v1 (parent v0)" in capsys.readouterr().out
    assert cli_main(["versions", "show", "latest", "-w", str(tiny_workspace)]) == 2
    assert "version: expected a version like v2, got 'latest'" in capsys.readouterr().err


def test_round_discard_through_the_cli(tiny_workspace, capsys, cli_main):
    ws = Workspace(tiny_workspace)
    make_version(ws, 0)
    make_version(ws, 1)
    assert cli_main(["round", "discard", "v0", "-w", str(tiny_workspace)]) == 2
    assert "v0: only the newest version can be discarded (newest: v1)" in capsys.readouterr().err
    assert cli_main(["round", "discard", "v1", "-w", str(tiny_workspace)]) == 0
    assert ws.finished_versions() == [0]


def test_data_validate_a_good_file(demo_data, capsys, cli_main):
    assert cli_main(["data", "validate", str(demo_data / "preferences_safety.jsonl")]) == 0  # default kind
    assert capsys.readouterr().out.replace("\n", "").endswith("400 valid preferences record(s)")


# --- usage errors and repeated in-process calls ----------------------------------------------------

@pytest.mark.parametrize("argv", [["no-such-command"], ["status", "--bogus"], ["versions", "show"]])
def test_usage_errors_exit_2(argv, capsys, cli_main):
    assert cli_main(argv) == 2


def test_main_registers_sub_commands_once(capsys):
    from saferounds.pipeline.cli import app, main

    main(["status", "--help"])
    groups, commands = len(app.registered_groups), len(app.registered_commands)
    main(["status", "--help"])
    assert (len(app.registered_groups), len(app.registered_commands)) == (groups, commands)


def test_round_run_checks_its_inputs_and_options_before_starting_a_version(tiny_workspace, capsys, cli_main):
    ws = Workspace(tiny_workspace)
    make_version(ws, 0)
    prompts = tiny_workspace / "data" / "prompts.jsonl"
    lines = prompts.read_text().splitlines()
    lines[6] = lines[6].replace('"role": "user"', '"role": "robot"')
    prompts.write_text("\n".join(lines) + "\n")
    assert cli_main(["round", "run", "-w", str(tiny_workspace)]) == 2
    assert f"{prompts}:7: messages[0].role" in capsys.readouterr().err
    assert ws.partial_versions() == [] and ws.finished_versions() == [0]  # nothing was started
    assert cli_main(["round", "run", "-w", str(tiny_workspace), "--until", "ppo"]) == 2  # v1 plans rm, rs, eval
    assert "--until ppo: v1 runs rm, rs, eval" in capsys.readouterr().err
    assert ws.partial_versions() == []


def test_a_plan_out_of_order_is_a_config_error(tiny_workspace, capsys, cli_main):
    cfg = tiny_workspace / "saferounds.yaml"
    cfg.write_text(cfg.read_text().replace("stages: [rm, rs, eval]", "stages: [eval, rs]"))
    assert cli_main(["status", "-w", str(tiny_workspace)]) == 2
    assert "rounds.plan[0].stages: ['eval', 'rs']: stages must be unique and in the order" in capsys.readouterr().err
