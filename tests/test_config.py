"""saferounds.yaml validation: every bad key, type, range or choice names its key path and what is
allowed; the CLI turns that into exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saferounds.core.errors import InputError
from saferounds.pipeline.config import CONFIG_NAME, Config, load_config, parse_config, version_in_spec

TOP_LEVEL = "data, distill, eval, gate, judge, model, ppo, pretrain, rejection_sampling, reward_models, rounds, seed, sft, tracking"


def error_of(data) -> str:
    with pytest.raises(InputError) as info:
        parse_config(data)
    return str(info.value)


def test_unknown_top_level_key_names_it_and_the_allowed_keys():
    msg = error_of({"seed": 1, "bogus": 1})
    assert msg == f"saferounds.yaml: bogus: unknown key; allowed here: {TOP_LEVEL}"


def test_unknown_nested_key_names_the_full_path_and_the_section_keys():
    msg = error_of({"model": {"lora": {"rank": 8}}})
    assert msg == ("saferounds.yaml: model.lora.rank: unknown key; "
                   "allowed here: alpha, dropout, enabled, layers, r, target_modules")


def test_unknown_key_inside_a_list_item_names_its_index():
    msg = error_of({"rounds": {"plan": [{"versions": "1+", "stages": ["rs"]},
                                        {"versions": "2", "stage": ["rs"]}]}})
    assert msg.startswith("saferounds.yaml: rounds.plan[1].stage: unknown key; allowed here: stages, versions")


@pytest.mark.parametrize("data, expected", [
    ({"seed": "x"}, "seed: expected an integer, got 'x'"),
    ({"seed": True}, "seed: expected an integer, got True"),  # YAML `true` is not an integer
    ({"sft": {"batch_size": 1.5}}, "sft.batch_size: expected an integer, got 1.5"),
    ({"sft": {"learning_rate": "fast"}}, "sft.learning_rate: expected a number, got 'fast'"),
    ({"model": {"load_in_4bit": "yes"}}, "model.load_in_4bit: expected true/false, got 'yes'"),
    ({"model": "llama"}, "model: expected a mapping of keys, got 'llama'"),
    ({"model": {"policy": None}}, "model.policy: expected a string, got None"),
    ({"data": {"sft": "a.jsonl"}}, "data.sft: expected a list of"),
    ({"data": {"sft": ["a.jsonl", 3]}}, "data.sft[1]: expected a string, got 3"),
    ({"data": {"heldout_prompts": 3}}, "data.heldout_prompts: expected a string or null, got 3"),
])
def test_wrong_types_name_the_key_and_the_expected_type(data, expected):
    assert error_of(data).startswith(f"saferounds.yaml: {expected}")


@pytest.mark.parametrize("data, expected", [
    ({"model": {"lora": {"dropout": 2}}}, "model.lora.dropout: 2.0 is out of range; allowed [0.0, 1.0]"),
    ({"model": {"lora": {"r": 0}}}, "model.lora.r: 0 is out of range; allowed [1, 10000000]"),
    ({"sft": {"batch_size": 0}}, "sft.batch_size: 0 is out of range; allowed [1, 10000000]"),
    ({"sft": {"max_length": 4}}, "sft.max_length: 4 is out of range; allowed [8, 10000000]"),
    ({"pretrain": {"warmup_ratio": -0.1}}, "pretrain.warmup_ratio: -0.1 is out of range; allowed [0.0, 1.0]"),
    ({"rounds": {"max_version": 0}}, "rounds.max_version: 0 is out of range; allowed [1, 10000000]"),
    ({"gate": {"threshold": 1.5}}, "gate.threshold: 1.5 is out of range; allowed [0.0, 1.0]"),
])
def test_out_of_range_values_name_the_key_and_the_range(data, expected):
    assert error_of(data) == f"saferounds.yaml: {expected}"


def test_bad_literal_lists_the_choices():
    assert error_of({"model": {"dtype": "fp8"}}) == (
        "saferounds.yaml: model.dtype: expected one of 'auto', 'float32', 'bfloat16', 'float16', got 'fp8'")
    assert error_of({"sft": {"lr_scheduler": "step"}}).startswith(
        "saferounds.yaml: sft.lr_scheduler: expected one of 'cosine', 'linear'")


def test_bad_stage_name_in_the_plan_names_the_list_index():
    msg = error_of({"rounds": {"plan": [{"versions": "1+", "stages": ["rm", "sft"]}]}})
    assert msg == ("saferounds.yaml: rounds.plan[0].stages[1]: expected one of 'rm', 'label', 'distill', 'rs', 'ppo', "
                   "'eval', got 'sft'")


@pytest.mark.parametrize("spec", ["x-3", "", "-3", "1-", "two", "3++"])
def test_bad_round_plan_version_spec(spec):
    msg = error_of({"rounds": {"plan": [{"versions": spec, "stages": ["rs"]}]}})
    assert msg == (f"saferounds.yaml: rounds.plan[0].versions: expected a version spec like '2', '1-3' "
                   f"or '4+', got {spec!r}")


def test_version_specs_select_the_right_versions():
    assert [v for v in range(1, 7) if version_in_spec(v, "2")] == [2]
    assert [v for v in range(1, 7) if version_in_spec(v, "v2-4")] == [2, 3, 4]
    assert [v for v in range(1, 7) if version_in_spec(v, "4+")] == [4, 5, 6]
    cfg = parse_config({"rounds": {"plan": [{"versions": "1-3", "stages": ["rm", "rs", "eval"]},
                                            {"versions": "3+", "stages": ["rm", "rs", "ppo", "eval"]}]}})
    assert cfg.stages_for(1) == ["rm", "rs", "eval"]
    assert cfg.stages_for(3) == ["rm", "rs", "ppo", "eval"]  # the last matching entry wins
    cfg = parse_config({"rounds": {"plan": [{"versions": "2", "stages": ["rs"]}]}})
    with pytest.raises(InputError, match=r"rounds.plan: no entry covers version v1"):
        cfg.stages_for(1)


def test_4bit_and_8bit_together_is_an_error():
    assert error_of({"model": {"load_in_4bit": True, "load_in_8bit": True}}) == (
        "saferounds.yaml: model.load_in_4bit, model.load_in_8bit: choose at most one")
    assert parse_config({"model": {"load_in_4bit": True}}).model.load_in_4bit is True


def test_every_problem_is_listed_at_once():
    msg = error_of({"bogus": 1, "seed": "x", "model": {"dtype": "fp8", "lora": {"r": -1}}})
    lines = msg.splitlines()
    assert len(lines) == 4
    assert {line.split(":")[1].strip() for line in lines} == {"bogus", "seed", "model.dtype", "model.lora.r"}
    assert all(line.startswith("saferounds.yaml: ") for line in lines)


def test_defaults_and_a_valid_file_parse(tmp_path):
    cfg = parse_config({})
    assert isinstance(cfg, Config) and cfg.seed == 0 and cfg.model.trust_remote_code is False
    assert cfg.pretrain.epochs == 1.0 and cfg.sft.epochs == 2.0
    assert cfg.model.load_in_4bit is False and cfg.model.load_in_8bit is False
    path = tmp_path / CONFIG_NAME
    path.write_text("seed: 3\nsft:\n  learning_rate: 2.0e-5\n  epochs: 1\nmodel:\n  lora: {enabled: true, r: 4}\n")
    cfg = load_config(path)
    assert (cfg.seed, cfg.sft.learning_rate, cfg.sft.epochs, cfg.model.lora.r) == (3, 2e-5, 1.0, 4)
    assert isinstance(cfg.sft.epochs, float)  # an int where a float is expected is converted


def test_config_hash_is_stable_and_sees_every_change():
    a, b = parse_config({"seed": 1}), parse_config({"seed": 1})
    assert a.hash() == b.hash() and len(a.hash()) == 64
    assert parse_config({"seed": 2}).hash() != a.hash()
    assert parse_config({"seed": 1, "gate": {"threshold": 0.2}}).hash() != a.hash()


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / CONFIG_NAME
    path.write_text("seed: 0\nmodel:\n  policy: tiny\n\tdtype: auto\n")  # a tab on line 4
    with pytest.raises(InputError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:4: not valid YAML")
    path.write_text("seed: 0\nmodel:\n  lora: {r: 4\nsft:\n  epochs: 1\n")  # unclosed flow mapping
    with pytest.raises(InputError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:4: not valid YAML")


def test_load_config_file_problems(tmp_path):
    with pytest.raises(InputError, match="no config file; run `saferounds init`"):
        load_config(tmp_path / CONFIG_NAME)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"seed: 0\nmodel:\n  policy: caf\xe9\n")
    with pytest.raises(InputError, match=r"latin1.yaml: not valid UTF-8"):
        load_config(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("seed: 0\nmodel:\n  lora:\n    rnak: 4\n")
    with pytest.raises(InputError) as info:
        load_config(nested)
    assert str(info.value).startswith(f"{nested}: model.lora.rnak: unknown key")


def test_the_presets_are_valid():
    from saferounds.pipeline.presets import PRESETS, preset_text

    for name in PRESETS:
        parse_config(yaml.safe_load(preset_text(name)), name)


# --- numbers, ranges and NaN ----------------------------------------------------------------

def test_exponent_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / CONFIG_NAME
    path.write_text("sft:\n  learning_rate: 1e-5\n")
    assert load_config(path).sft.learning_rate == 1e-5


def test_reversed_version_range_is_an_error():
    error_of({"rounds": {"plan": [{"versions": "3-1", "stages": ["rs"]}]}})


def test_nan_is_out_of_range():
    error_of({"sft": {"epochs": float("nan")}})


# --- through the command line ----------------------------------------------------------------

def write_bad_config(ws: Path) -> None:
    text = (ws / CONFIG_NAME).read_text().replace("  dtype: auto\n", "  dtype: auto\n  lora:\n    rank: 8\n")
    assert "rank: 8" in text
    (ws / CONFIG_NAME).write_text(text)


def test_cli_status_on_a_bad_config_exits_2_with_the_key_path(tiny_workspace, capsys, cli_main):
    write_bad_config(tiny_workspace)
    assert cli_main(["status", "-w", str(tiny_workspace)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tiny_workspace / CONFIG_NAME}: model.lora.rank: unknown key; "
                          "allowed here: alpha, dropout, enabled, layers, r, target_modules")
    assert "Traceback" not in err


def test_installed_entry_point_exits_2_on_a_bad_config(tiny_workspace):
    exe = Path(sys.executable).with_name("saferounds")
    assert exe.exists(), f"{exe}: the console script is not installed (pip install -e .)"
    write_bad_config(tiny_workspace)
    proc = subprocess.run([str(exe), "status", "-w", str(tiny_workspace)], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "model.lora.rank: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
