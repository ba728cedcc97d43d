"""The `tiny` preset: a small Llama-architecture policy, tiny reward models and a byte-level BPE
tokenizer with a chat template, built locally and deterministically (no hub access).

Everything is saved with ``save_pretrained`` (safetensors), so the rest of the pipeline loads the
preset exactly as it would load any Hugging Face model: swapping ``model.policy: tiny`` for a hub id
in saferounds.yaml is the only change a user makes to go to a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saferounds.core.accelerator import save_pretrained_atomic
from saferounds.data import synthetic

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Small enough to train on 2 CPU cores in minutes, big enough to learn the demo's templates.
TINY_DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
TINY_RM_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
VOCAB_SIZE = 1024

_EXTRA_CORPUS = [  # a few sentences beyond the demo's own
    "The quick brown fox jumps over the lazy dog. I'm sorry, but I can't help with that.",
    "Sure, here is a short answer. The capital of France is Paris. Water boils at 100 degrees.",
    "How do I kill a Python process? Use the kill command with the process id.",
]


def default_corpus() -> list[str]:
    """Text the tokenizer is trained on: the demo generator's corpus (deterministic)."""
    return list(synthetic.corpus()) + list(_EXTRA_CORPUS)


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sorted(corpus or default_corpus()), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "right"
    return hf


def _llama_config(tokenizer, dims: dict, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
        rms_norm_eps=1e-5, **dims, **extra,
    )


def build_tiny(out_dir: str | Path, seed: int = 0, corpus: list[str] | None = None) -> dict[str, Path]:
    """Build and save the tiny policy and reward-model backbone under out_dir.

    Returns {"policy": path, "reward_model": path}. Idempotent: an existing build is reused.
    """
    from transformers import GenerationConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out_dir = Path(out_dir)
    paths = {"policy": out_dir / "policy", "reward_model": out_dir / "reward_model"}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    tokenizer = build_tokenizer(corpus)
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(_llama_config(tokenizer, TINY_DIMS))
    policy.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=48,
    )
    torch.manual_seed(seed + 1)
    reward = LlamaForSequenceClassification(_llama_config(tokenizer, TINY_RM_DIMS, num_labels=1))
    for model, path in ((policy, paths["policy"]), (reward, paths["reward_model"])):
        save_pretrained_atomic(model, tokenizer, path)
    return paths
