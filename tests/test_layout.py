"""The package layout ARCHITECTURE.md describes: imports flow pipeline -> {sampling, eval} -> reward_models
-> core, no module imports itself back through others (function-local imports included), and the round
stages and CLI areas are explicit tables."""
import ast
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "data", "reward_models", "sampling", "eval", "pipeline")
# What each package may import of the others (itself always).
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "reward_models": {"core"},
    "sampling": {"core", "data", "reward_models"},
    "eval": {"core", "data", "reward_models"},
    "pipeline": {"core", "data", "reward_models", "sampling", "eval"},
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


def _module(path: Path, root: Path) -> str:
    """`ROOT/pipeline/stages/rm.py` -> `saferounds.pipeline.stages.rm` (a package's __init__ is the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(("saferounds",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def import_graph(root: Path, packages) -> dict[str, set[str]]:
    """Module -> the saferounds modules it imports, anywhere in it (function-local imports included).
    `from P import m` points at P.m when that is a module, else at P."""
    files = {_module(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}

    def known(name: str) -> str | None:  # the module a dotted name lies in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the file's package, up level - 1
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else known(base) for a in node.names}
        graph[name] = targets - {None, name}
    return graph


def import_cycles(root: Path, packages) -> list[set[str]]:
    """The strongly connected sets of more than one module in the import graph (Tarjan): each is a cycle."""
    graph, index, low, stack, on_stack, cycles = import_graph(root, packages), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while not scc or w != v:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
            if len(scc) > 1:
                cycles.append(scc)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert [sorted(c) for c in import_cycles(ROOT, PACKAGES)] == []


def test_the_cycle_checker_sees_a_planted_cycle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from saferounds.pkg.b import g\n\ndef f():\n    return g()\n")
    (tmp_path / "pkg" / "b.py").write_text("def g():\n    from saferounds.pkg import a  # hidden in a function\n")
    (tmp_path / "pkg" / "c.py").write_text("import saferounds.pkg.a\n")  # imports into the cycle, not part of it
    assert import_graph(tmp_path, ["pkg"]) == {"saferounds.pkg": set(), "saferounds.pkg.a": {"saferounds.pkg.b"},
                                               "saferounds.pkg.b": {"saferounds.pkg.a"},
                                               "saferounds.pkg.c": {"saferounds.pkg.a"}}
    assert import_cycles(tmp_path, ["pkg"]) == [{"saferounds.pkg.a", "saferounds.pkg.b"}]


def test_stages_table_follows_the_stage_order():
    from saferounds.pipeline.config import STAGE_ORDER, StageName
    from saferounds.pipeline.stage_policies import POLICY_DIRS
    from saferounds.pipeline.stages import STAGES

    assert tuple(STAGES) == STAGE_ORDER == typing.get_args(StageName)
    assert all((s.run.__name__, s.validate.__name__) == ("run", "validate")
               and s.run.__module__ == s.validate.__module__ == f"saferounds.pipeline.stages.{name}"
               for name, s in STAGES.items())
    assert {name: s.policy for name, s in STAGES.items() if s.policy} == POLICY_DIRS


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
