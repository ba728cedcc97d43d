"""README's commands work as written on a fresh clone (issue 29 item 5): every `saferounds ...` (also behind
`.venv/bin/` or `accelerate launch -m saferounds.pipeline.cli`) in a fenced shell block names sub-commands and
options that exist and parses; every `pip install -e '.[extras]'` names extras pyproject declares; accelerate
config files exist; the cheap ones run in a miniature (`init --preset llama2-7b`, each command's --help)."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*```(?:bash|sh|shell)\n(.*?)^\s*```", re.S | re.M)


def readme_commands(text: str) -> list[list[str]]:
    """Each simple command of README's shell blocks, as argv (comments dropped, `&&`/`||` chains split)."""
    out = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            argv: list[str] = []
            for w in words + ["&&"]:
                if w in ("&&", "||", ";", "|"):
                    if argv:
                        out.append(argv)
                    argv = []
                else:
                    argv.append(w.lstrip("("))
    return out


def saferounds_args(argv: list[str]) -> list[str] | None:
    """The CLI arguments of a command that runs saferounds, else None."""
    if Path(argv[0]).name == "saferounds":
        return argv[1:]
    if "saferounds.pipeline.cli" in argv:
        return argv[argv.index("saferounds.pipeline.cli") + 1:]
    return None


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    cmds = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(cmds) >= 20
    return cmds


def _leaf(args: list[str]):
    """(the click command the arguments name, the words naming it, the rest)."""
    import typer

    from saferounds.pipeline.cli import app

    cmd, path = typer.main.get_command(app), []
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        cmd, path, args = cmd.commands[args[0]], path + [args[0]], args[1:]
    return cmd, path, args


def test_every_saferounds_command_names_real_subcommands_and_options(commands):
    checked = 0
    for argv in commands:
        args = saferounds_args(argv)
        if args is None:
            continue
        cmd, path, rest = _leaf(args)
        assert path and not hasattr(cmd, "commands"), f"README: `{shlex.join(argv)}`: no such command"
        names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        unknown = [a.split("=")[0] for a in rest if a.startswith("-") and a.split("=")[0] not in names]
        assert not unknown, f"README: `{shlex.join(argv)}`: {' '.join(path)} has no option {unknown}"
        cmd.make_context(" ".join(path), list(rest))  # parses: arguments in number, values of the right type
        checked += 1
    assert checked >= 12


def test_every_pip_extra_and_accelerate_config_exists(commands):
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    seen = set()
    for argv in commands:
        for w in argv:
            if m := re.fullmatch(r"\.\[([\w,-]+)\]", w):
                seen |= set(m.group(1).split(","))
        if "--config_file" in argv:
            assert (REPO / argv[argv.index("--config_file") + 1]).is_file(), shlex.join(argv)
    assert seen and seen <= extras, seen - extras
    assert {"real", "dev", "trackers"} <= seen  # the real-model, the CI and the trackers' install lines


def test_the_cheap_commands_run_as_written(commands, cli_main, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    inits = [saferounds_args(a) for a in commands if saferounds_args(a) and saferounds_args(a)[:1] == ["init"]
             and "llama2-7b" in a]
    assert inits
    for args in inits:
        assert cli_main(args + ["--force"]) == 0, args
        assert (tmp_path / args[1] / "saferounds.yaml").is_file()
    paths = {tuple(_leaf(saferounds_args(a))[1]) for a in commands if saferounds_args(a)}
    for path in sorted(paths):
        assert cli_main([*path, "--help"]) == 0, path
        assert "Usage" in capsys.readouterr().out
