"""A saved judge: a directory with ``config.json`` (kind, backbone, max_tokens, threshold, head shape, the
sha256 of every training file, the held-out metrics on unseen models) and ``model.safetensors`` (the head);
where trained judges live (the workspace's, else the user-wide defaults)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from saferounds.core.errors import InputError
from saferounds.eval.judges.encoder import Encoder, features
from saferounds.eval.judges.heads import make_head, predict

SCHEMA = "saferounds.judge/1"
KINDS = ("refusal", "harm")


def user_home() -> Path:
    """$SAFEROUNDS_HOME, else ~/.cache/saferounds."""
    env = os.environ.get("SAFEROUNDS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "saferounds"


def default_judges_dir() -> Path:
    return user_home() / "judges"


def workspace_judges_dir(root: Path) -> Path:
    return Path(root) / "judges"


@dataclass
class LearnedJudge:
    """A trained head + what it needs to score (``load_judge`` / ``save``)."""
    kind: str
    head: object
    config: dict
    encoder: Encoder | None = None

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def enc(self, cache_dir: Path | None = None) -> Encoder:
        if self.encoder is None:
            self.encoder = Encoder(self.config["backbone"], int(self.config["max_tokens"]), cache_dir=cache_dir)
        return self.encoder

    def probabilities(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return predict(self.head, features(self.enc(), prompts, responses, self.config.get("feature_set", "pair")))

    def save(self, directory: Path) -> Path:
        """Write config.json + model.safetensors into a temp dir beside ``directory``, then rename."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700 directories; others may read a workspace
        try:
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
            old = None
            if directory.exists():
                old = directory.parent / f".{directory.name}.old.{os.getpid()}"
                os.replace(directory, old)
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory


def load_judge(directory: Path) -> LearnedJudge:
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path = directory / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{cfg_path}: not a saved judge ({e})") from None
    if config.get("schema") != SCHEMA or config.get("kind") not in KINDS:
        raise InputError(f"{cfg_path}: schema/kind: expected {SCHEMA} and one of {KINDS}")
    head = make_head(int(config["head"]["in_dim"]), int(config["head"]["hidden"]))
    head.load_state_dict(load_file(str(directory / "model.safetensors")))
    head.eval()
    return LearnedJudge(config["kind"], head, config)


def find_judge(kind: str, workspace: Path | None = None) -> Path | None:
    """WS/judges/<kind>/ when trained there, else the default (``saferounds judges train --default``)."""
    places = ([workspace_judges_dir(workspace) / kind] if workspace else []) + [default_judges_dir() / kind]
    return next((p for p in places if (p / "config.json").is_file()), None)
