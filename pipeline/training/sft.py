"""Supervised stages on transformers.Trainer: step-0 domain pretraining (causal LM on raw text)
and supervised fine-tuning (chat template, prompt tokens masked out of the loss). The rejection-
sampling fine-tune of every round goes through `finetune` too.

Both are resumable: Trainer checkpoints go to `work_dir`, and a re-run continues from the last
one. The trained model is saved (safetensors, or a peft adapter) under a temporary name and
renamed into `out_dir` only when complete.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from saferounds.core import distributed as dist
from saferounds.core.accelerator import save_pretrained_atomic
from saferounds.core.errors import InputError
from saferounds.core.progress import current, log_callback, trainer_callback
from saferounds.core.tracking import point_tensorboard, trainer_kwargs
from saferounds.pipeline.models import load_policy

IGNORE_INDEX = -100


def encode_sft(tokenizer, messages: list[dict], completion: str, max_length: int) -> dict | None:
    """Token ids and labels for one example; labels are IGNORE_INDEX over the prompt.

    The prompt is rendered with the chat template and add_generation_prompt; the full text is the
    template's rendering of the conversation with the completion as the assistant turn when that
    starts with the prompt (true of well-formed templates), else prompt + completion + eos.
    Returns None when truncation would leave no completion token to learn from.
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                         tokenize=False)
    if not full.startswith(prompt):
        full = prompt + completion + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    n_prompt = min(len(prompt_ids), len(full_ids))
    if n_prompt >= len(full_ids):
        return None
    labels = [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:]
    return {"input_ids": full_ids, "labels": labels}


def encode_text(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """Pack raw documents (each ending with eos) into blocks of max_length tokens."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + eos
    blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) > 1]


class PadCollator:
    """Right-pads input_ids with the pad token and labels with IGNORE_INDEX."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _training_args(train_cfg, work_dir: Path, seed: int, n_examples: int, runs: Path | None = None):
    from transformers import TrainingArguments

    steps_per_epoch = math.ceil(n_examples / (train_cfg.batch_size * train_cfg.gradient_accumulation_steps))
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=str(work_dir), num_train_epochs=train_cfg.epochs,
        per_device_train_batch_size=train_cfg.batch_size, per_device_eval_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        learning_rate=train_cfg.learning_rate, lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=max(1, round(train_cfg.warmup_ratio * steps_per_epoch * train_cfg.epochs)),
        weight_decay=train_cfg.weight_decay, logging_steps=train_cfg.logging_steps,
        save_strategy="steps", save_steps=train_cfg.save_steps, save_total_limit=1,
        seed=seed, data_seed=seed, **trainer_kwargs(runs), bf16=use_bf16, remove_unused_columns=False,
        train_sampling_strategy="group_by_length", length_column_name="length",
        disable_tqdm=True, dataloader_num_workers=0,  # progress: core.progress; the loss dicts: the log
        dataloader_pin_memory=torch.cuda.is_available(),
        **dist.trainer_kwargs(train_cfg.batch_size, "sft.batch_size"),
    )


def _dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([dict(r, length=len(r["input_ids"])) for r in rows])


def _heldout_loss(model, rows: list[dict], collator, batch_size: int) -> float:
    """Mean token loss on held-out rows (no gradient)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collator(rows[i:i + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum")
            total += loss.item()
            count += int((shift_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def _train(base, rows, heldout, train_cfg, model_cfg, out_dir, work_dir, seed, name: str = "sft",
           runs: Path | None = None) -> dict:
    from transformers import Trainer, set_seed

    from saferounds.core.checkpoints import torn_notes
    from saferounds.core.checkpoints import train as train_resumable
    from saferounds.core.finite import check_value, check_weights, finite_callback

    if not rows:
        raise InputError("training data: no usable examples (all were empty after truncation to "
                         f"max_length={train_cfg.max_length})")
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    set_seed(seed)
    model, tokenizer = load_policy(base, model_cfg, for_training=True)
    collator = PadCollator(tokenizer.pad_token_id)
    metrics = {"examples": len(rows)}
    if heldout:
        metrics["heldout_loss_before"] = _heldout_loss(model, heldout, collator, train_cfg.batch_size)
    work_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model=model, args=_training_args(train_cfg, work_dir, seed, len(rows), runs),
                      train_dataset=_dataset(rows), data_collator=collator)
    _report_progress(trainer, name, runs)
    trainer.add_callback(finite_callback(name))  # NaN/Inf gradients or weights fail the stage at once
    result, last = train_resumable(trainer, work_dir)  # a torn checkpoint-N (kill -9 mid-save) is set aside
    check_value(result.training_loss, name, result.global_step, "the training loss")
    check_weights(model, name, result.global_step)
    metrics["train_loss"] = result.training_loss
    metrics["steps"] = result.global_step
    metrics["resumed_from"] = Path(last).name if last else None
    if torn_notes(work_dir):
        metrics["torn_checkpoints"] = torn_notes(work_dir)
    if heldout:
        metrics["heldout_loss_after"] = _heldout_loss(model, heldout, collator, train_cfg.batch_size)
    dist.save_trained(trainer, lambda: save_pretrained_atomic(model, tokenizer, out_dir), out_dir, tokenizer)
    current().done(_summary(metrics))
    return metrics


def _report_progress(trainer, name: str, runs: Path | None) -> None:
    """The loss dicts go to the log (not stdout), progress to core.progress, curves to TensorBoard."""
    import logging

    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(log_callback(logging.getLogger("saferounds.train"), name))
    trainer.add_callback(trainer_callback(name))
    point_tensorboard(trainer, runs)


def _summary(metrics: dict) -> str:
    before, after = metrics.get("heldout_loss_before"), metrics.get("heldout_loss_after")
    if before is not None and after is not None:
        return f"loss {before:.3f} -> {after:.3f} (held-out)"
    return f"train loss {metrics['train_loss']:.3f}"


def finetune(base, examples: list[dict], train_cfg, model_cfg, out_dir, work_dir, seed: int = 0,
             heldout: list[dict] | None = None, name: str = "sft", runs: Path | None = None) -> dict:
    """SFT (and the rejection-sampling fine-tune): `examples` are {"messages", "completion"}.
    `name` labels its progress line; `runs` is its TensorBoard directory (core.tracking)."""
    from saferounds.pipeline.models import load_tokenizer

    tokenizer = load_tokenizer(base, model_cfg.trust_remote_code)

    def encode(items):
        encoded = (encode_sft(tokenizer, x["messages"], x["completion"], train_cfg.max_length) for x in items)
        return [e for e in encoded if e is not None]

    return _train(base, encode(examples), encode(heldout or []), train_cfg, model_cfg, out_dir, work_dir, seed,
                  name, runs)


def pretrain(base, texts: list[str], train_cfg, model_cfg, out_dir, work_dir, seed: int = 0,
             heldout_texts: list[str] | None = None, runs: Path | None = None) -> dict:
    """Step 0: causal-LM training on raw domain text, packed into max_length blocks."""
    from saferounds.pipeline.models import load_tokenizer

    tokenizer = load_tokenizer(base, model_cfg.trust_remote_code)
    rows = encode_text(tokenizer, texts, train_cfg.max_length)
    held = encode_text(tokenizer, heldout_texts, train_cfg.max_length) if heldout_texts else []
    return _train(base, rows, held, train_cfg, model_cfg, out_dir, work_dir, seed, "pretrain", runs)
