"""Workspace presets: `tiny` (local tiny models + the synthetic demo data), `smollm2` (SmolLM2-135M-Instruct
with real public data: data/public.py) and `llama2-7b`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from saferounds.core.errors import InputError
from saferounds.core.io import atomic_write_text
from saferounds.pipeline.config import CONFIG_NAME, parse_config

PRESETS = ("tiny", "smollm2", "llama2-7b")


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise InputError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return resources.files("saferounds.pipeline.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def init_workspace(directory: str | Path, preset: str = "tiny", force: bool = False,
                   data_size: str | None = None, overrides: dict | None = None,
                   data_root: str | Path | None = None) -> Path:
    """Write DIR/saferounds.yaml from a preset (validated); `tiny` also writes its demo data and
    `smollm2` its data files from the public data under data_root (size: full, quarter or mini)."""
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
        from saferounds.data.synthetic import write_demo_data

        write_demo_data(directory / "data", seed=0, size=data_size or "smoke")
    if preset == "smollm2":
        from saferounds.data.public import build

        from saferounds.data.hub import public_data_root

        data_root = public_data_root(data_root)  # no --data-root: the public sets from the hub (data.hub)
        build(data_root, directory / "data", size=data_size or "full", seed=int(yaml.safe_load(text).get("seed", 0)))
    atomic_write_text(path, text)
    return path
