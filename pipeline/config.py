"""The workspace's one config file, `saferounds.yaml`, as typed dataclasses validated on load.

Each package owns its sections in its torch-free config.py (reward_models/config.py, sampling/config.py,
eval/config.py, pipeline/training/config.py); this module owns the data and round-plan sections,
composes the rest, and validates everything with one generic checker. Unknown keys, wrong types and
values out of range are errors that name the key path and what is allowed; the CLI exits 2 on them.
Every field has a docstring (the string right under it): README's configuration table is generated
from them (pipeline/config_doc.py). Loading a config imports no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from saferounds.core.errors import InputError
from saferounds.core.tracking import TRACKERS
from saferounds.eval.config import EvalConfig
from saferounds.pipeline.stage_policies import ALWAYS_MAKE_A_POLICY
from saferounds.pipeline.training.config import PPOConfig, TrainConfig
from saferounds.reward_models.config import GateConfig, JudgeConfig, ModelConfig, RewardModelConfig
from saferounds.sampling.config import DistillConfig, RejectionSamplingConfig

CONFIG_NAME = "saferounds.yaml"
# The round stages in the order a version runs them; pipeline.stages.STAGES maps each to its `run`.
STAGE_ORDER = ("rm", "label", "distill", "rs", "ppo", "eval")
StageName = Literal["rm", "label", "distill", "rs", "ppo", "eval"]


@dataclass
class DataConfig:
    """YAML section `data`: input files, relative to the workspace (or absolute, or `hub:NAME[:SPLIT]`);
    `.jsonl .json .csv .parquet`, optionally `.gz`."""
    pretrain_text: list[str] = field(default_factory=list)
    """Raw text for step 0 domain pretraining."""
    sft: list[str] = field(default_factory=list)
    """SFT examples (prompt/messages + completion) for v0."""
    prompts: list[str] = field(default_factory=list)
    """Prompts the rounds sample from (rs, ppo, label)."""
    helpfulness_preferences: list[str] = field(default_factory=list)
    """Preference pairs for the helpfulness RM."""
    safety_preferences: list[str] = field(default_factory=list)
    """Preference pairs for the safety RM."""
    rankings: list[str] = field(default_factory=list)
    """K-way rankings (expanded to pairs, or Elo rewards for the regression objective)."""
    heldout_prompts: Optional[str] = None
    """Held-out prompts: the evaluation suite when eval.suites is empty, and the temperature sweep's slice."""


@dataclass
class RoundPlanEntry:
    """Which stages the versions in `versions` run."""
    versions: str = "1+"
    """Version spec: "1", "1-3" or "4+"."""
    stages: list[StageName] = field(
        default_factory=lambda: ["rm", "rs", "eval"])
    """Stages from rm, label, rs, ppo, eval, in that order; at least one of rs, ppo."""


@dataclass
class RoundsConfig:
    """YAML section `rounds`: the plan of versions (LLaMA 2: rejection sampling up to V4, then PPO on top)."""
    plan: list[RoundPlanEntry] = field(default_factory=lambda: [
        RoundPlanEntry("1-3", ["rm", "rs", "eval"]), RoundPlanEntry("4+", ["rm", "rs", "ppo", "eval"])])
    """A list of {versions, stages} entries; the last entry covering a version wins."""
    max_version: int = field(default=5, metadata={"min": 1})
    """The last version `round run` creates."""


@dataclass
class TrackingConfig:
    """YAML section `tracking`: where every training stage's curves go, one run per version and stage (`vN/sft`,
    `v1/rm-helpfulness`, `v1/rs`, `v4/ppo`)."""
    report_to: list[Literal[tuple(TRACKERS)]] = field(default_factory=lambda: ["tensorboard"])
    """Trackers: tensorboard (WORKSPACE/runs/vN/<stage>), mlflow ($MLFLOW_TRACKING_URI, else WORKSPACE/runs/mlruns;
    `pip install -e '.[trackers]'`), wandb, comet_ml, clearml, dvclive, trackio, swanlab; [] for none. The
    Trainer's report_to (pretrain, SFT, RMs, the rs fine-tune) and accelerate's trackers (PPO)."""


@dataclass
class Config:
    """The whole of saferounds.yaml."""
    seed: int = 0
    """Seed of every stage (data splits, sampling, training)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Which models, and how they are loaded."""
    data: DataConfig = field(default_factory=DataConfig)
    """Input files."""
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0))
    """Step 0 domain pretraining (one epoch by default)."""
    sft: TrainConfig = field(default_factory=TrainConfig)
    """Supervised fine-tuning of v0."""
    reward_models: RewardModelConfig = field(default_factory=RewardModelConfig)
    """Training the helpfulness and safety reward models."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The gated combination of the two RMs."""
    rejection_sampling: RejectionSamplingConfig = field(default_factory=RejectionSamplingConfig)
    """Best-of-K sampling, selection and the fine-tune."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Safety context distillation (LLaMA 2 Sec. 4.2.4), the `distill` stage."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO on the gated reward."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The safety evaluation of every version."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The LLM judge (AI feedback)."""
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    """The plan of versions."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Training curves (TensorBoard, MLflow, W&B, ...)."""

    def stages_for(self, version: int) -> list[str]:
        """The planned stages of version N (the last matching plan entry wins)."""
        stages = None
        for entry in self.rounds.plan:
            if version_in_spec(version, entry.versions):
                stages = list(entry.stages)
        if stages is None:
            raise InputError(f"rounds.plan: no entry covers version v{version}")
        return stages

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """What the results depend on: everything but where the curves go (tracking)."""
        blob = json.dumps({k: v for k, v in self.to_dict().items() if k != "tracking"}, sort_keys=True,
                          default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def version_in_spec(version: int, spec: str) -> bool:
    spec = spec.strip().lstrip("v")
    if spec.endswith("+"):
        return version >= int(spec[:-1])
    if "-" in spec:
        lo, hi = spec.split("-", 1)
        return int(lo) <= version <= int(hi.lstrip("v"))
    return version == int(spec)


def check_stages(stages: list[str]) -> str | None:
    """A version's stages: unique, in the order rm -> label -> distill -> rs -> ppo -> eval, making a policy."""
    if not any(s in ALWAYS_MAKE_A_POLICY for s in stages):
        return f"{stages} makes no policy; every version needs {' or '.join(ALWAYS_MAKE_A_POLICY)}"
    order = [STAGE_ORDER.index(s) for s in stages if s in STAGE_ORDER]
    if order != sorted(order) or len(set(stages)) != len(stages):
        return f"{stages}: stages must be unique and in the order {' -> '.join(STAGE_ORDER)}"
    return None


def _check_version_spec(spec: str) -> str | None:
    bad = f"expected a version spec like '2', '1-3' or '4+', got {spec!r}"
    try:
        version_in_spec(1, spec)
    except ValueError:
        return bad
    body = spec.strip().lstrip("v")
    if "-" in body and not body.endswith("+"):
        lo, hi = body.split("-", 1)
        if int(lo) > int(hi.lstrip("v")):
            return f"the range {spec!r} is reversed (low-high, e.g. '1-3')"
    if int(body.rstrip("+").split("-", 1)[0]) < 1:
        return f"{spec!r} names v0, which `saferounds sft` makes, not a round; plans start at 1 (e.g. '1-3')"
    return None


# ---------------------------------------------------------------------------------------------
# Generic validation: dataclass fields and their type hints are the schema.

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = _type_name(typing.get_args(tp)[0])
        if item.startswith("one of "):
            return f"a list, each {item}"
        return f"a list of {item[2:] + 's' if item.startswith('a ') else item}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp, key: str, errors: list[str]):
    """Check one value against a type hint; return the converted value (errors appended)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _convert(value, arg, key, trial)
            if not trial:
                return out
        errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in typing.get_args(tp):
            errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
            return []
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    errors.append(f"{key}: unsupported schema type {tp!r} (a bug in saferounds)")
    return value


INT_CEILING = 10_000_000  # no count, size or step setting is sensibly larger; catches 1e9 typos early
SEED_CEILING = 2 ** 32 - 1


def default_max(name: str, tp) -> int | None:
    """The ceiling of an integer setting with no explicit max (seeds: 32 bits; everything else 10^7)."""
    if tp is int or tp == Optional[int]:
        return SEED_CEILING if name == "seed" else INT_CEILING
    return None


def build(cls, data: Any, prefix: str = "", errors: list[str] | None = None):
    """Make dataclass `cls` from a mapping, validating every key; errors collect in `errors`."""
    own = errors is None
    errors = [] if own else errors
    where = prefix or "(top level)"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a mapping of keys, got {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            errors.append(f"{prefix + '.' if prefix else ''}{key}: unknown key; allowed here: {allowed}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _convert(data[name], hints[name], key, errors)
        lo = f.metadata.get("min", 0 if name == "seed" else None)  # seeds: torch and numpy take none below 0
        hi = f.metadata.get("max", default_max(name, hints[name]))
        if f.metadata.get("nonempty") and isinstance(value, str) and not value.strip():
            errors.append(f"{key}: empty; {f.metadata['nonempty']}")
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{key}: {value!r} is not a finite number")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo or hi is not None and value > hi:
                rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                errors.append(f"{key}: {value!r} is out of range; allowed {rng}")
        kwargs[name] = value
    if cls is RoundPlanEntry and "versions" in kwargs and isinstance(kwargs["versions"], str):
        problem = _check_version_spec(kwargs["versions"])
        if problem:
            errors.append(f"{prefix}.versions: {problem}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:  # a section's own __post_init__ check
        errors.append(f"{where}: {e}")
        obj = None
    if own and errors:
        raise InputError("\n".join(errors))
    return obj


def parse_config(data: dict, source: str = CONFIG_NAME) -> Config:
    errors: list[str] = []
    cfg = build(Config, data, "", errors)
    model = (data or {}).get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and model.get("load_in_4bit") is True and model.get("load_in_8bit") is True:
        errors.append("model.load_in_4bit, model.load_in_8bit: choose at most one")
    if cfg is not None and not cfg.rounds.plan:
        errors.append("rounds.plan: empty; give at least one {versions, stages} entry")
    for i, entry in enumerate(cfg.rounds.plan if cfg is not None and not errors else []):
        problem = check_stages(entry.stages)
        if problem:
            errors.append(f"rounds.plan[{i}].stages: {problem}")
    if errors:
        raise InputError("\n".join(f"{source}: {e}" for e in errors))
    return cfg


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (`1e-5` is a number, not a string) that rejects duplicate keys."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, apply `KEY.PATH=VALUE` overrides (if any), and validate."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no config file; run `saferounds init` to create one")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid UTF-8") from None
    if data is not None and not isinstance(data, dict):  # `[]` is falsy: it would have read as the defaults
        raise InputError(f"{path}: expected a mapping of sections (model:, data:, rounds:, ...), got "
                         f"{type(data).__name__} {data!r:.40}")
    return parse_config(apply_overrides(data or {}, overrides or []), str(path))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.path=value` overrides (values parsed as YAML), as on torchtune's command line."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY.PATH=VALUE")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = parse_yaml(raw)
    return data


def dump_config(cfg: Config | dict) -> str:
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
