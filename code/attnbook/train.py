"""A small, readable training loop for the book's toy models.

One function, ``train``, does what every chapter needs: AdamW with decoupled weight
decay (Loshchilov & Hutter, 2019), a linear warm-up followed by a cosine decay of the
learning rate, gradient-norm clipping, optional label smoothing, an explicit seed and an
explicit device. It returns the history of the loss (and of the learning rate and the
gradient norm), so that a chapter can plot its learning curve.

Batches come from a function ``make_batch(generator) -> (inputs, targets)``; ``inputs``
is a tensor or a tuple of tensors (passed to the model as positional arguments) and the
model returns logits ``(..., num_classes)`` for targets ``(...)``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention._checks import check_positive_int
from .data.synthetic import IGNORE_INDEX

Tensor = torch.Tensor
Batch = tuple[Tensor | tuple[Tensor, ...], Tensor]


# --8<-- [start:schedule]
def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at ``step`` (0-based): warm up linearly, then decay as a cosine.

    Steps ``0 .. warmup_steps-1`` climb linearly to 1 (the first step already moves, at
    ``1 / warmup_steps``); from ``warmup_steps`` to ``total_steps`` the multiplier follows
    half a cosine from 1 down to ``min_ratio``, and stays there afterwards.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
# --8<-- [end:schedule]


@dataclass
class TrainConfig:
    """Hyper-parameters of ``train``. ``clip_norm=None`` turns clipping off."""

    steps: int
    lr: float = 1e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip_norm: float | None = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    log_every: int = 0  # print a progress line every this many steps (0: silent)


@dataclass
class History:
    """What happened at each step: the training loss, the learning rate, the gradient norm."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of logits ``(..., classes)`` against targets ``(...)``.

    Positions whose target is ``IGNORE_INDEX`` do not count. With label smoothing ε the
    target distribution puts 1-ε on the right class and spreads ε over all classes.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} "
                         f"plus a class axis")
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)


@torch.no_grad()
def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Fraction of positions (targets != ``IGNORE_INDEX``) where the arg-max is right."""
    counted = targets != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == targets) & counted
    return correct.sum().item() / max(1, counted.sum().item())


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices (projections, embeddings) but not biases or normalisation gains:
    # shrinking a bias or a LayerNorm scale towards 0 has no regularising meaning.
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _to(inputs, device):
    if isinstance(inputs, (tuple, list)):
        return tuple(x.to(device) for x in inputs)
    return (inputs.to(device),)


# --8<-- [start:train]
def train(model: nn.Module, make_batch: Callable[[torch.Generator], Batch], config: TrainConfig,
          *, device: torch.device | str,
          loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> History:
    """Train ``model`` in place for ``config.steps`` steps on ``device``; return the history.

    ``make_batch(generator)`` draws one batch from the seeded ``generator``; the default
    loss is ``cross_entropy`` with ``config.label_smoothing``. Randomness inside the model
    (dropout) is seeded too, without touching the caller's global random state, so the
    same config gives the same history.
    """
    check_positive_int("steps", config.steps)
    device = torch.device(device)
    loss_fn = loss_fn or (lambda logits, y: cross_entropy(logits, y, config.label_smoothing))
    generator = torch.Generator().manual_seed(config.seed)  # the data stream
    model.to(device).train()
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr,
                                  betas=config.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(
        step, warmup_steps=config.warmup_steps, total_steps=config.steps,
        min_ratio=config.min_lr_ratio))
    history, start = History(), time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # dropout masks, inside this block only
        for step in range(config.steps):
            inputs, targets = make_batch(generator)
            loss = loss_fn(model(*_to(inputs, device)), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = math.inf if config.clip_norm is None else config.clip_norm
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # before clipping
            history.lr.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
            history.loss.append(loss.item())
            history.grad_norm.append(grad_norm.item())
            if config.log_every and (step + 1) % config.log_every == 0:
                print(f"step {step + 1:>5}/{config.steps}  loss {loss.item():.4f}  "
                      f"lr {history.lr[-1]:.2e}")
    history.seconds = time.perf_counter() - start
    return history
# --8<-- [end:train]
