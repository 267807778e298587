"""A small, readable training loop for the book's toy models.

One function, ``train``, does what every chapter needs: AdamW with decoupled weight
decay (Loshchilov & Hutter, 2019), a linear warm-up followed by a cosine decay of the
learning rate (or the "Noam" schedule of Vaswani et al., 2017, §5.3), gradient-norm
clipping, optional label smoothing, an explicit seed and an explicit device. It returns
the history of the loss (and of the learning rate and the gradient norm), so that a
chapter can plot its learning curve. Optionally it saves and resumes checkpoints, runs in
mixed precision on CUDA, and shows a progress bar.

Batches come from a function ``make_batch(generator) -> (inputs, targets)``; ``inputs``
is a tensor or a tuple of tensors (passed to the model as positional arguments) and the
model returns logits ``(..., num_classes)`` for targets ``(...)``.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

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


# --8<-- [start:noam]
def noam(step: int, *, d_model: int, warmup_steps: int) -> float:
    """The learning rate of Vaswani et al. (2017, §5.3) at ``step`` (1-based):

        lrate = d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5).

    It grows linearly for ``warmup_steps`` steps, peaks at step = warmup_steps with
    (d_model · warmup_steps)^-0.5, then decays as 1/sqrt(step).
    """
    check_positive_int("step", step)
    check_positive_int("d_model", d_model)
    check_positive_int("warmup_steps", warmup_steps)
    return d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)
# --8<-- [end:noam]


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
    schedule: str = "cosine"  # or "noam": then lr multiplies noam(step, d_model, warmup_steps)
    d_model: int | None = None  # the model width the Noam schedule needs
    amp: bool = False  # float16 autocast + gradient scaling on CUDA; ignored on the CPU
    progress: bool | None = None  # a tqdm bar; None: only when stderr is a terminal
    checkpoint_every: int = 0  # with train(checkpoint=...), also save every this many steps

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "noam":
            if self.d_model is None:
                raise ValueError("schedule='noam' needs d_model (the model width)")
            check_positive_int("warmup_steps", self.warmup_steps)


SCHEDULES = ("cosine", "noam")


def lr_multiplier(step: int, config: TrainConfig) -> float:
    """What ``config.lr`` is multiplied by at ``step`` (0-based, as ``LambdaLR`` counts).

    With ``schedule="noam"``, ``config.lr`` is the constant factor in front of the Noam
    rate (1.0 reproduces the paper; the Annotated Transformer uses 1 or 2).
    """
    if config.schedule == "noam":
        return noam(step + 1, d_model=config.d_model, warmup_steps=config.warmup_steps)
    return warmup_cosine(step, warmup_steps=config.warmup_steps, total_steps=config.steps,
                         min_ratio=config.min_lr_ratio)


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


# --8<-- [start:checkpoint]
def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, **extra) -> None:
    """Save what resuming needs: the model's and the optimizer's state (Adam's moment
    estimates are part of the training state, not a cache) and the number of steps done.
    ``extra`` holds anything else ``torch.save`` can store (scheduler, random states...)."""
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                **extra}, path)


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, *, map_location=None) -> dict:
    """Load a ``save_checkpoint`` file into ``model`` (and ``optimizer``); return the whole
    dictionary, whose ``"step"`` says where to continue."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state
# --8<-- [end:checkpoint]


def show_progress(progress: bool | None, stream=None) -> bool:
    """Whether to draw a progress bar: as asked, or (None) only when ``stream`` is a TTY."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _to(inputs, device):
    if isinstance(inputs, (tuple, list)):
        return tuple(x.to(device) for x in inputs)
    return (inputs.to(device),)


# --8<-- [start:train]
def train(model: nn.Module, make_batch: Callable[[torch.Generator], Batch], config: TrainConfig,
          *, device: torch.device | str,
          loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
          checkpoint: str | Path | None = None, resume: bool = False) -> History:
    """Train ``model`` in place for ``config.steps`` steps on ``device``; return the history.

    ``make_batch(generator)`` draws one batch from the seeded ``generator``; the default
    loss is ``cross_entropy`` with ``config.label_smoothing``. Randomness inside the model
    (dropout) is seeded too, without touching the caller's global random state, so the
    same config gives the same history.

    ``checkpoint``: a file to save the training state to at the end (and every
    ``config.checkpoint_every`` steps); with ``resume=True`` training continues from that
    file's step, with the same batches and dropout masks as an uninterrupted run, and the
    history holds only the steps run now.
    """
    check_positive_int("steps", config.steps)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint file to resume from")
    device = torch.device(device)
    loss_fn = loss_fn or (lambda logits, y: cross_entropy(logits, y, config.label_smoothing))
    generator = torch.Generator().manual_seed(config.seed)  # the data stream
    model.to(device).train()
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr,
                                  betas=config.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, config))
    use_amp = config.amp and device.type == "cuda"  # on the CPU both objects below do nothing
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    cuda_devices = [device] if device.type == "cuda" else []
    history, start, first_step = History(), time.perf_counter(), 0

    def save(step: int) -> None:
        save_checkpoint(checkpoint, model, optimizer, step, scheduler=schedule.state_dict(),
                        scaler=scaler.state_dict(), data_rng=generator.get_state(),
                        torch_rng=torch.get_rng_state(),
                        cuda_rng=[torch.cuda.get_rng_state(d) for d in cuda_devices])

    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)  # dropout masks, inside this block only
        if resume:
            # to the CPU first: random states must stay CPU tensors; weights and Adam's
            # moments are copied onto the parameters' device by load_state_dict
            state = load_checkpoint(checkpoint, model, optimizer, map_location="cpu")
            schedule.load_state_dict(state["scheduler"])
            if state["scaler"]:  # empty when the saved run did not scale
                scaler.load_state_dict(state["scaler"])
            generator.set_state(state["data_rng"])
            torch.set_rng_state(state["torch_rng"])
            for d, rng in zip(cuda_devices, state["cuda_rng"]):
                torch.cuda.set_rng_state(rng, d)
            first_step = state["step"]
        bar = tqdm(range(first_step, config.steps), desc="train", unit="step", initial=first_step,
                   total=config.steps, disable=not show_progress(config.progress), dynamic_ncols=True)
        for step in bar:
            inputs, targets = make_batch(generator)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(model(*_to(inputs, device)), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # scaled up so that float16 gradients do not underflow
            scaler.unscale_(optimizer)     # clip (and report) the true gradient
            max_norm = math.inf if config.clip_norm is None else config.clip_norm
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # before clipping
            history.lr.append(schedule.get_last_lr()[0])
            scaler.step(optimizer)  # skipped if the scaled gradients overflowed
            scaler.update()
            schedule.step()
            history.loss.append(loss.item())
            history.grad_norm.append(grad_norm.item())
            if not bar.disable:
                bar.set_postfix(loss=f"{history.loss[-1]:.4f}", refresh=False)
            if config.log_every and (step + 1) % config.log_every == 0:
                tqdm.write(f"step {step + 1:>5}/{config.steps}  loss {loss.item():.4f}  "
                           f"lr {history.lr[-1]:.2e}")
            every = config.checkpoint_every
            if checkpoint is not None and ((every and (step + 1) % every == 0) or step + 1 == config.steps):
                save(step + 1)
    history.seconds = time.perf_counter() - start
    return history
# --8<-- [end:train]
