"""Fine-tuning the scoring LM on the picked samples: Cherry v1's "brief experience" training.

Cherry v1 trains with Stanford Alpaca's ``train.py`` (Cherry_LLM ``training/stanford_alpaca``):
the example is prompt(Q) + A + EOS, the loss is on the answer and EOS tokens only (the prompt's
labels are ignored), AdamW, a cosine schedule with 3 % warm-up, weight decay 0, gradient
clipping 1.0 (the Trainer's default), global batch 128, 3 epochs, lr 2e-5, max length 512
(docs/methods.md §1b). Here one optimiser step averages the NLL over every answer token of its
global batch (micro-batches cut by a token budget with ``plan_batches``).

A checkpoint is written after every epoch (weights, AdamW moments, the epoch's losses) as
safetensors and JSON, never a pickle, in a temporary folder renamed into place; a killed run
resumes from the last finished epoch and ends with the same weights as an uninterrupted one
(the shuffle of epoch e is seeded by seed + e).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import atomic
from ..progress import Progress, report
from .losses import LOGIT_ROWS, plan_batches

IGNORE = -100
CHECKPOINT_STATE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass
class TrainExample:
    """Token ids of one training sequence and how many of its first tokens are prompt."""

    ids: list[int]
    n_prompt: int

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 128
    max_grad_norm: float = 1.0
    token_budget: int = 1024
    seed: int = 0
    precision: str = "float32"   # or "bfloat16": torch.autocast on the forward pass

    def as_params(self) -> dict:
        return dict(self.__dict__)


def training_example(tokenizer, start_id: int, eos_id: int, prompt: str, answer: str,
                     max_length: int) -> TrainExample | None:
    """prompt(Q) + A + EOS as the model reads it (the boundary rule of ``split_prompt_answer``),
    cut at ``max_length`` tokens; None when no answer token survives the cut."""
    from .templates import split_prompt_answer, with_start

    prompt_ids, answer_ids, _ = split_prompt_answer(tokenizer, prompt, answer)
    head = with_start(start_id, prompt_ids)
    ids = (head + answer_ids + [int(eos_id)])[:max_length]
    if len(ids) <= len(head):
        return None
    return TrainExample(ids, len(head))


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def answer_nll_sum(model, examples: Sequence[TrainExample], pad_id: int, precision: str):
    """Sum of the NLL of every target token of ``examples`` (one padded forward pass), and
    the number of those tokens. Right padding without a mask is exact for a causal model."""
    import torch
    import torch.nn.functional as F

    width = max(len(e.ids) for e in examples)
    x = torch.full((len(examples), width), int(pad_id), dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, e in enumerate(examples):
        x[r, :len(e.ids)] = torch.as_tensor(e.ids, dtype=torch.long)
        rows.extend([r] * e.n_target)
        cols.extend(range(e.n_prompt - 1, len(e.ids) - 1))
        targets.extend(e.ids[e.n_prompt:])
    device = next(model.parameters()).device
    x = x.to(device)
    rows_t = torch.as_tensor(rows, device=device)
    cols_t = torch.as_tensor(cols, device=device)
    targets_t = torch.as_tensor(targets, device=device)
    with _autocast(device.type, precision):
        hidden = model.base_model(input_ids=x).last_hidden_state[rows_t, cols_t]
        head = model.get_output_embeddings()
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[0], LOGIT_ROWS):
            logits = head(hidden[s:s + LOGIT_ROWS]).float()
            total = total + F.cross_entropy(logits, targets_t[s:s + LOGIT_ROWS],
                                            reduction="sum")
    return total, len(targets)


def _autocast(device_type: str, precision: str):
    import contextlib

    import torch

    if precision == "bfloat16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mean_answer_loss(model, examples: Sequence[TrainExample], pad_id: int,
                     precision: str = "float32", token_budget: int = 2048) -> float:
    """Mean NLL per target token over ``examples`` (no gradient): what training lowers."""
    import torch

    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    lengths = [len(examples[i].ids) for i in order]
    with torch.inference_mode():
        for lo, hi in plan_batches(lengths, token_budget):
            nll, n = answer_nll_sum(model, [examples[i] for i in order[lo:hi]], pad_id,
                                    precision)
            total, count = total + float(nll), count + n
    return total / max(count, 1)


# ----- checkpoints --------------------------------------------------------------------------
def latest_checkpoint(folder: Path) -> Path | None:
    """The finished epoch checkpoint with the highest epoch in ``folder``, if any."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("epoch-*") if (p / CHECKPOINT_STATE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_model_folder(folder: Path, model, tokenizer) -> None:
    """``save_pretrained`` of model and tokenizer without transformers' progress bars (the
    command draws its own)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _save_checkpoint(folder: Path, epoch: int, model, tokenizer, optimizer, state: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"epoch-{epoch}"
    tmp = Path(tempfile.mkdtemp(prefix=f".epoch-{epoch}.", dir=folder))
    try:
        save_model_folder(tmp, model, tokenizer)
        save_file(_optimizer_tensors(model, optimizer), str(tmp / OPTIMIZER_FILE))
        atomic.write_json(tmp / CHECKPOINT_STATE, state)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for older in folder.glob("epoch-*"):  # only the newest checkpoint is needed to resume
        if older != target:
            shutil.rmtree(older, ignore_errors=True)
    return target


def _optimizer_tensors(model, optimizer) -> dict:
    """AdamW's moments by parameter name, as plain tensors (safetensors, not a pickle)."""
    import torch

    out = {}
    for name, param in model.named_parameters():
        st = optimizer.state.get(param)
        if not st:
            continue
        out[f"{name}::exp_avg"] = st["exp_avg"].contiguous()
        out[f"{name}::exp_avg_sq"] = st["exp_avg_sq"].contiguous()
        out[f"{name}::step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    return out


def _load_optimizer_tensors(model, optimizer, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path))
    for name, param in model.named_parameters():
        if f"{name}::exp_avg" not in saved:
            continue
        optimizer.state[param] = {
            "exp_avg": saved[f"{name}::exp_avg"].to(param.device),
            "exp_avg_sq": saved[f"{name}::exp_avg_sq"].to(param.device),
            "step": torch.tensor(float(saved[f"{name}::step"][0]), dtype=torch.float32)}


# ----- training -----------------------------------------------------------------------------
def train_brief(base_folder: str | os.PathLike, examples: Sequence[TrainExample], pad_id: int,
                config: TrainConfig, checkpoints: Path, progress: Progress | None = None):
    """Fine-tune the model in ``base_folder`` on ``examples``; returns ``(model, tokenizer,
    history)`` where history holds per epoch the mean training loss (over the answer tokens
    of the epoch, each batch measured before its update) and the seconds it took.

    Resumes from the newest checkpoint in ``checkpoints`` (the caller keys that folder by
    everything that changes the result). Progress counts optimiser steps of the whole run."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    n_steps = steps_per_epoch(len(examples), config.batch_size)
    total_steps = n_steps * config.epochs
    resume = latest_checkpoint(checkpoints)
    source = resume if resume is not None else Path(base_folder)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.config.use_cache = False
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=config.weight_decay)
    history: list[dict] = []
    first_epoch = 0
    if resume is not None:
        state = atomic.read_json(resume / CHECKPOINT_STATE)
        _load_optimizer_tensors(model, optimizer, resume / OPTIMIZER_FILE)
        history, first_epoch = list(state["history"]), int(state["epoch"])
        for group in optimizer.param_groups:  # what a scheduler started at step 0 records
            group["initial_lr"] = config.lr
    step = first_epoch * n_steps
    # the schedule is a pure function of the step: a resumed run starts it where it was
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps,
        last_epoch=step - 1)
    report(progress, step, total_steps, f"epoch {first_epoch + 1}/{config.epochs}")
    for epoch in range(first_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(examples),
                               generator=torch.Generator().manual_seed(config.seed + epoch))
        epoch_nll, epoch_tokens = 0.0, 0
        for b in range(n_steps):
            batch = [examples[int(i)] for i in order[b * config.batch_size:
                                                     (b + 1) * config.batch_size]]
            batch.sort(key=lambda e: -len(e.ids))
            n_target = sum(e.n_target for e in batch)
            for lo, hi in plan_batches([len(e.ids) for e in batch], config.token_budget):
                nll, _ = answer_nll_sum(model, batch[lo:hi], pad_id, config.precision)
                (nll / n_target).backward()
                epoch_nll += float(nll.detach())
            epoch_tokens += n_target
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            report(progress, step, total_steps,
                   f"epoch {epoch + 1}/{config.epochs} loss {epoch_nll / epoch_tokens:.3f}")
        history.append({"epoch": epoch + 1, "train_loss": epoch_nll / max(epoch_tokens, 1),
                        "answer_tokens": epoch_tokens,
                        "seconds": round(time.perf_counter() - started, 1)})
        _save_checkpoint(checkpoints, epoch + 1, model, tokenizer, optimizer,
                         {"epoch": epoch + 1, "history": history, "steps": step})
    model.eval()
    return model, tokenizer, history


def write_json_sorted(path: Path, obj) -> None:
    """The brief model's sidecar: sorted keys, so its sha256 depends on content only."""
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
