"""Loading and saving scalar reward models: any `AutoModelForSequenceClassification(num_labels=1)`.

Options (duck-typed from the `model` config section so this package imports nothing of the pipeline):
dtype, LoRA via peft, 4/8-bit via bitsandbytes, gradient checkpointing, trust_remote_code (off unless asked).
Weights are read and written as safetensors only.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from reward_models.records import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULTS = dict(dtype="auto", load_in_4bit=False, load_in_8bit=False, trust_remote_code=False,
                gradient_checkpointing=False,
                lora=SimpleNamespace(enabled=False, r=16, alpha=32, dropout=0.05, target_modules=["all-linear"]))


def _opt(cfg, name):
    return getattr(cfg, name, DEFAULTS[name]) if cfg is not None else DEFAULTS[name]


def resolve_dtype(name: str) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it, else fp32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def quantization_config(cfg):
    """bitsandbytes settings from the `model` section (NF4 4-bit or 8-bit), or None."""
    four, eight = _opt(cfg, "load_in_4bit"), _opt(cfg, "load_in_8bit")
    if not (four or eight):
        return None
    if not torch.cuda.is_available():
        raise InputError("model.load_in_4bit / model.load_in_8bit: bitsandbytes quantisation needs a CUDA GPU; "
                         "set both to false on a CPU machine")
    from transformers import BitsAndBytesConfig

    if four:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=resolve_dtype(_opt(cfg, "dtype")))
    return BitsAndBytesConfig(load_in_8bit=True)


def to_accelerator(model):
    """Move a model to the GPU when there is one (quantised models were placed when loaded)."""
    if torch.cuda.is_available() and not getattr(model, "is_quantized", False) and model.device.type == "cpu":
        model.to("cuda")
    return model


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


def load_reward_model(path_or_id: str | Path, model_cfg=None, for_training: bool = False):
    """Return (model, tokenizer) for a scalar RM. A directory with a peft adapter loads base + adapter.

    A backbone without a scalar head (e.g. a sentence encoder or a causal LM) gets a freshly initialised
    one-output head; for_training with LoRA enabled wraps the model in a new adapter (the head stays trainable).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path_or_id = str(path_or_id)
    trust = bool(_opt(model_cfg, "trust_remote_code"))
    kwargs = dict(num_labels=1, dtype=resolve_dtype(_opt(model_cfg, "dtype")), trust_remote_code=trust,
                  use_safetensors=True, quantization_config=quantization_config(model_cfg))
    adapter = (Path(path_or_id) / "adapter_config.json").exists()
    try:
        if adapter:
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(path_or_id, is_trainable=for_training,
                                                                          **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"model.reward_model: cannot load '{path_or_id}' as a sequence classifier "
                         f"({str(e).splitlines()[0][:300]})") from None
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust)
    fix_pad_token(model, tokenizer)
    if not for_training:
        return model.eval(), tokenizer
    if _opt(model_cfg, "load_in_4bit") or _opt(model_cfg, "load_in_8bit"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model,
                                                use_gradient_checkpointing=_opt(model_cfg, "gradient_checkpointing"))
    elif _opt(model_cfg, "gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    lora = _opt(model_cfg, "lora")
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
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(n for n in names if n not in exclude)


def save_pretrained_atomic(model, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained (safetensors) of model + tokenizer under a temporary name, then renamed into
    place, so a crash never leaves a half-written model where a complete one is expected."""
    import os
    import shutil

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def save_reward_model(model, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained as safetensors (a peft model saves its adapter + the scalar head)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
