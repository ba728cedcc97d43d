"""The package layout ARCHITECTURE.md describes: imports flow pipeline -> {sampling, eval} -> reward_models
-> core, and the round stages and CLI areas are explicit tables."""
import ast
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "reward_models", "sampling", "eval", "pipeline")
# What each package may import of the others (itself always).
ALLOWED = {
    "core": set(),
    "reward_models": {"core"},
    "sampling": {"core", "reward_models"},
    "eval": {"core", "reward_models"},
    "pipeline": {"core", "reward_models", "sampling", "eval"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_package(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(_package(node.module))
    return found & set(PACKAGES)


def _package(module: str) -> str:
    """`saferounds.eval.report` -> `eval`; a bare top-level name (the old layout) counts as itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "saferounds" and len(parts) > 1 else parts[0]


def test_imports_flow_one_way():
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for imported in _imports(path) - ALLOWED[package] - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert wrong == []


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from saferounds.pipeline.workspace import Workspace\n")
    assert _imports(bad) == {"pipeline"}


def test_stages_table_follows_the_stage_order():
    from saferounds.pipeline.config import STAGE_ORDER, StageName
    from saferounds.pipeline.stages import STAGES

    assert tuple(STAGES) == STAGE_ORDER == typing.get_args(StageName)
    assert all(fn.__name__ == "run" and fn.__module__ == f"saferounds.pipeline.stages.{name}" for name, fn in STAGES.items())


def test_cli_areas_are_a_table_of_register_functions():
    from saferounds.pipeline.cli import AREAS, app

    assert all(fn.__name__ == "register" and fn.__module__.startswith("saferounds.pipeline.cli.") for fn in AREAS.values())
    names = {c.name or c.callback.__name__ for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert {"rm", "eval", "report", "ppo", "label", "annotate", "demo"} <= names


MAX_FUNCTION_LINES = 80  # a longer function reads as several: split it into named steps


def long_functions(root: Path, packages, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:line name (N lines)` of every function and method longer than `limit` lines, def to last line."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        found.append(f"{path.relative_to(root).as_posix()}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_over_80_lines():
    assert long_functions(ROOT, [p for p in PACKAGES if (ROOT / p).is_dir()]) == []


def test_the_length_checker_sees_an_81_line_function(tmp_path):
    (tmp_path / "pkg").mkdir()
    lines = [f"x{i} = {i}" for i in range(79)]
    fits = "def fits():\n" + "".join(f"    {l}\n" for l in lines)  # 80 lines: allowed
    method = "class C:\n    def too_long(self):\n" + "".join(f"        {l}\n" for l in lines) + "        return 0\n"
    (tmp_path / "pkg" / "m.py").write_text(fits + "\n\n" + method)
    assert long_functions(tmp_path, ["pkg"]) == ["pkg/m.py:84 too_long (81 lines)"]
    assert long_functions(tmp_path, ["pkg"], limit=81) == []
