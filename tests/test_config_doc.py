"""Config sections are documented, torch-free dataclasses, and README's table is generated from them."""
import dataclasses
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

from saferounds.pipeline.config import Config
from saferounds.pipeline.config_doc import README, config_table, field_docs, render, rows

ROOT = Path(__file__).resolve().parent.parent


def _sections(cls=Config, seen=None):
    seen = seen if seen is not None else set()
    if cls in seen:
        return seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        for t in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(t):
                _sections(t, seen)
    return seen


def test_every_config_field_has_a_docstring():
    missing = [f"{cls.__name__}.{f.name}" for cls in _sections() for f in dataclasses.fields(cls)
               if f.name not in field_docs(cls)]
    assert missing == []
    assert len(_sections()) >= 14  # Config and every section and sub-section


def test_readme_configuration_table_is_generated_and_current():
    text = README.read_text(encoding="utf-8")
    assert render(text) == text, "README.md is stale: run `python -m saferounds.pipeline.config_doc`"
    table = config_table()
    # one row per leaf key, with its default and range from the dataclass
    assert "| `gate.threshold` | a number in [0.0, 1.0] | `0.15` |" in table
    assert "| `pretrain.epochs` | a number in [0.0, inf] | `1.0` |" in table  # the Config default, not TrainConfig's
    assert "| `rounds.plan[].stages` |" in table
    assert len(table.splitlines()) == 2 + sum(1 for _ in rows())


def test_a_stale_readme_is_detected(tmp_path, monkeypatch):
    import saferounds.pipeline.config_doc as doc

    stale = README.read_text(encoding="utf-8").replace("| `gate.threshold` |", "| `gate.threshold_old` |")
    path = tmp_path / "README.md"
    path.write_text(stale, encoding="utf-8")
    monkeypatch.setattr(doc, "README", path)
    assert doc.main(["--check"]) == 1
    assert doc.main([]) == 0 and doc.main(["--check"]) == 0  # regenerated


def test_validating_a_config_imports_no_torch(tmp_path):
    cfg = tmp_path / "saferounds.yaml"
    cfg.write_text("seed: 3\nppo: {steps: 7}\njudge: {model: m}\nrejection_sampling: {k: 2}\n")
    code = textwrap.dedent(f"""
        import sys
        from saferounds.pipeline.config import load_config
        cfg = load_config({str(cfg)!r})
        assert cfg.ppo.steps == 7 and cfg.rejection_sampling.k == 2
        heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
