"""A mean-pooled sequence classifier: any encoder, the mask-weighted mean of its last hidden states, one
linear `score` head. `model.reward_model_pooling: mean` builds RMs of this kind.

Why: a sentence encoder such as all-MiniLM-L6-v2 was trained to embed a text as that mean, so frozen,
the mean carries what a preference head needs and the first token does not. Measured on the smollm2
preset's held-out pairs (bench/README.md, "Options side by side"): frozen MiniLM with a linear head on
the mean ranks HH helpful 0.565, HH harmless 0.545 and Do-Not-Answer 0.833, against 0.520 / 0.540 / 0.771
on BERT's pooled [CLS] (what `BertForSequenceClassification` reads).

It is an ordinary transformers model: `save_pretrained` writes config.json (model_type
`saferounds-mean-pooled`, the encoder's config inside) and model.safetensors (`encoder.*`, `score.*`);
importing this module registers it with the Auto classes, so `AutoModelForSequenceClassification
.from_pretrained(dir)` loads it back. The head is named `score` as in decoder classifiers, so
training.score_head and train_head_only find it.
"""
from __future__ import annotations

import torch
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "saferounds-mean-pooled"


class MeanPooledConfig(PretrainedConfig):
    """The encoder's own config (`encoder`, a nested config) and num_labels (1 for a scalar RM)."""
    model_type = MODEL_TYPE
    sub_configs = {"encoder": AutoConfig}

    def __init__(self, encoder: dict | PretrainedConfig | None = None, **kwargs):
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        self.encoder = encoder
        kwargs.setdefault("num_labels", 1)
        super().__init__(**kwargs)
        if encoder is not None:
            self.hidden_size = encoder.hidden_size


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, H]: the mean of hidden [B, T, H] over the positions where attention_mask is 1."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPooledForSequenceClassification(PreTrainedModel):
    """encoder -> mean over real tokens -> Linear(hidden, num_labels) named `score`."""
    config_class = MeanPooledConfig
    base_model_prefix = "encoder"
    # the head stays fp32 whatever dtype the backbone loads in (model.reward_model_dtype): forward casts the
    # pooled mean to it, and a head fitted in fp32 is saved and scored unrounded
    _keep_in_fp32_modules_strict = ["score"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MeanPooledConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)
        self.score = torch.nn.Linear(config.encoder.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if module is getattr(self, "score", None):
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.zero_()

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.encoder.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.score(mean_pool(hidden, attention_mask).to(self.score.weight.dtype))  # a bf16 backbone, fp32 head
        return SequenceClassifierOutput(logits=logits)

    @classmethod
    def from_encoder(cls, path: str, dtype=None, trust_remote_code: bool = False, layers: int = 0):
        """A new RM on the encoder at `path` (its weights loaded, the head freshly initialised); `layers` > 0:
        only its lower `layers` blocks (model.reward_model_layers), which the saved config then records."""
        encoder = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                            trust_remote_code=trust_remote_code, **lower_layers(path, layers))
        model = cls(MeanPooledConfig(encoder=encoder.config))
        model.config.name_or_path = model.name_or_path = str(path)  # a LoRA adapter records it as its base
        model.encoder = encoder  # the head stays fp32 (_keep_in_fp32_modules_strict)
        return model


def lower_layers(path, layers: int, trust_remote_code: bool = False) -> dict:
    """from_pretrained's override that loads only the lower `layers` blocks of the model at `path` ({} for 0);
    ValueError when the model has no num_hidden_layers or fewer layers than asked."""
    if not layers:
        return {}
    n = getattr(AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), "num_hidden_layers", None)
    if n is None or layers > n:
        raise ValueError(f"model.reward_model_layers: {layers} asked, the backbone {path} has "
                         f"{'no num_hidden_layers' if n is None else f'{n} layers'}")
    return {"num_hidden_layers": layers}


def is_mean_pooled(path_or_id, trust_remote_code: bool = False) -> bool:
    """Whether a checkpoint is already a mean-pooled RM (then it loads as it is, head included)."""
    try:
        return AutoConfig.from_pretrained(str(path_or_id), trust_remote_code=trust_remote_code).model_type == MODEL_TYPE
    except (OSError, ValueError):
        return False


AutoConfig.register(MODEL_TYPE, MeanPooledConfig, exist_ok=True)
AutoModelForSequenceClassification.register(MeanPooledConfig, MeanPooledForSequenceClassification, exist_ok=True)
