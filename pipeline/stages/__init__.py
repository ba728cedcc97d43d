"""The round's stages, one module each, in the order a version runs them (pipeline.config.STAGE_ORDER).

Each module has `run(ctx: StageContext) -> dict` (the metrics the manifest keeps) whose body reads as the
numbered steps of its docstring, and `validate(ws, n, plan)`, its input checks, which the round runs for
every planned stage before anything of vN is written. STAGES describes each stage: what it runs and checks,
the data files it reads, and the policy it makes. A new stage: a module here, a row in STAGES, its name in
pipeline.config.STAGE_ORDER / StageName, and (if it makes a policy) in pipeline.stage_policies.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from saferounds.pipeline.config import Config
from saferounds.pipeline.stage_policies import POLICY_DIRS
from saferounds.pipeline.stages import distill, eval, label, ppo, rm, rs
from saferounds.pipeline.stages.context import StageContext
from saferounds.pipeline.workspace import Workspace


class Stage(NamedTuple):
    run: Callable[[StageContext], dict]
    """The stage; returns the metrics vN's manifest keeps."""
    validate: Callable[[Workspace, int, list[str]], None]
    """validate(ws, n, plan): its input checks (InputError, exit 2), run before .vN.partial is created."""
    inputs: tuple[str, ...]
    """Config keys of the data files it reads; vN's manifest records their sha256."""
    policy: str | None
    """The directory of the version it writes a policy to (pipeline.stage_policies), None if it makes none."""

    def input_files(self, config: Config) -> list[str]:
        """The files its `inputs` name in `config` (a key may hold a list, one path, or nothing)."""
        out = []
        for key in self.inputs:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            out += [value] if isinstance(value, str) else list(value or [])
        return out


def _stage(name: str, module, inputs: tuple[str, ...]) -> Stage:
    return Stage(module.run, module.validate, inputs, POLICY_DIRS.get(name))


STAGES = {
    # train the helpfulness and safety reward models (LLaMA 2 Sec. 3.2.2)
    "rm": _stage("rm", rm, ("data.helpfulness_preferences", "data.safety_preferences", "data.rankings")),
    # an LLM judge labels pairs of samples (RLAIF) for the next round's RMs
    "label": _stage("label", label, ("data.prompts",)),
    # safety context distillation: fine-tune on preprompted answers (Sec. 4.2.4)
    "distill": _stage("distill", distill, ("data.prompts", "distill.prompts")),
    # best-of-K rejection sampling, then fine-tune (Sec. 3.2.3)
    "rs": _stage("rs", rs, ("data.prompts", "rejection_sampling.demonstrations")),
    # PPO on the gated reward with a KL penalty (Sec. 3.2.3, Eq. 4)
    "ppo": _stage("ppo", ppo, ("data.prompts",)),
    # safety and helpfulness evaluation, report (Sec. 4.4)
    "eval": _stage("eval", eval, ()),
}
