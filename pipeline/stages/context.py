"""What a round stage is given (`StageContext`), and the input checks several stages' `validate` share."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from saferounds.core.errors import InputError
from saferounds.data.load import load_prompts
from saferounds.pipeline.config import Config, version_in_spec
from saferounds.pipeline.workspace import Workspace


@dataclass
class StageContext:
    """One stage's run of version N: its workspace and config, the partial directory it writes into, the
    policy it starts from (pipeline.rounds.stage_parent), the newest reward models up to vN and the
    finished versions before it."""
    workspace: Workspace
    config: Config
    version: int
    dir: Path
    parent_policy: Path
    rm_paths: dict[str, Path]
    prior_versions: list[Path]
    progress: Callable[[str], None] = lambda message: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("saferounds"))


def validate_prompts(ws: Workspace, plan: list[str]) -> None:
    """data.prompts lists files, and each loads (bad rows fail naming file:line)."""
    if not ws.config.data.prompts:
        raise InputError(f"{ws.config_path}: data.prompts: no files listed; the planned stages {plan} need prompts")
    for f in ws.config.data.prompts:
        load_prompts(ws.resolve(f))


def validate_planned_rms(ws: Workspace, n: int, plan: list[str]) -> None:
    """Both reward models are there for vN before .vN.partial is created: from an `rm` stage of vN or an
    earlier version. With overlapping rounds.plan entries (the last match wins) the message names the
    entries that cover vN."""
    if "rm" in plan:
        return
    missing = [k for k in ("helpfulness", "safety") if k not in ws.rm_paths(at_most=n)]
    if not missing:
        return
    covering = [f"{{versions: {e.versions!r}, stages: {list(e.stages)}}}" for e in ws.config.rounds.plan
                if version_in_spec(n, e.versions)]
    overlap = f"; entries {' and '.join(covering)} all cover v{n} and the last one wins" if len(covering) > 1 else ""
    raise InputError(f"rounds.plan: v{n} runs {plan} but there is no {' or '.join(missing)} reward model yet; "
                     f"plan an `rm` stage for v{n}{overlap}")
