"""Workspace presets: `tiny` (local tiny models + the synthetic demo data) and `llama2-7b`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from core.errors import InputError
from core.io import atomic_write_text
from pipeline.config import CONFIG_NAME, parse_config

PRESETS = ("tiny", "llama2-7b")


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise InputError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return resources.files("pipeline.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def init_workspace(directory: str | Path, preset: str = "tiny", force: bool = False,
                   data_size: str = "smoke", overrides: dict | None = None) -> Path:
    """Write DIR/saferounds.yaml from a preset (validated); `tiny` also writes its demo data."""
    text = preset_text(preset)
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory")
    if path.exists() and not force:
        raise InputError(f"{path}: already exists; pass --force to overwrite it")
    if force and any((directory / "versions").glob("*")):
        raise InputError(f"{directory}: has versions; --force would change the config they were built with. "
                         "Start a new workspace instead")
    if overrides:
        data = yaml.safe_load(text)
        for section, values in overrides.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        text = yaml.safe_dump(data, sort_keys=False)
    parse_config(yaml.safe_load(text), str(path))  # a preset must always be valid
    directory.mkdir(parents=True, exist_ok=True)
    if preset == "tiny":
        from pipeline.synthetic import write_demo_data

        write_demo_data(directory / "data", seed=0, size=data_size)
    atomic_write_text(path, text)
    return path
