"""Placing Hugging Face models on the hardware: dtype, bitsandbytes quantisation, moving to the GPU,
and saving without leaving half a model behind. Used for policies and reward models alike.

`model_cfg` is the `model` config section (reward_models.config.ModelConfig), read duck-typed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from saferounds.core.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it, else fp32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def quantization_config(model_cfg):
    """bitsandbytes settings from the `model` section (NF4 4-bit or 8-bit), or None."""
    if not (model_cfg.load_in_4bit or model_cfg.load_in_8bit):
        return None
    if not torch.cuda.is_available():
        raise InputError("model.load_in_4bit / model.load_in_8bit: bitsandbytes quantisation needs a CUDA GPU; "
                         "set both to false on a CPU machine")
    from transformers import BitsAndBytesConfig

    if model_cfg.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=resolve_dtype(model_cfg.dtype))
    return BitsAndBytesConfig(load_in_8bit=True)


def to_accelerator(model):
    """Move a model to the GPU when there is one (quantised models were placed when loaded)."""
    if torch.cuda.is_available() and not getattr(model, "is_quantized", False) and model.device.type == "cpu":
        from saferounds.core.distributed import device

        model.to(device())  # cuda:LOCAL_RANK under a launcher
    return model


def free_accelerator_memory() -> None:
    """Release memory of models the caller has just dropped (the next model needs the GPU)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_pretrained_atomic(model, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained (safetensors) of model + tokenizer under a temporary name, then renamed into
    place, so a crash never leaves a half-written model where a complete one is expected."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except Exception as e:  # ENOSPC comes as OSError, or wrapped by safetensors / torch
        from saferounds.core.errors import disk_full, no_space

        if not no_space(e):
            raise

        shutil.rmtree(tmp, ignore_errors=True)
        needed = sum(p.numel() * p.element_size() for p in model.parameters())
        err = disk_full(OSError(28, "No space left on device", str(tmp)))
        raise type(err)(out_dir, needed, err.free) from None
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
