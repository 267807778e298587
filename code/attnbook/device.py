"""Choosing where the book's code runs: ``auto``, ``cpu`` or ``cuda``."""
from __future__ import annotations

import torch

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda`` to a ``torch.device``.

    ``auto`` picks CUDA when it is available and the CPU otherwise. Asking for ``cuda``
    on a machine without it is an error that says what to do, never a silent fallback:
    a reader who asked for the GPU should know their numbers came from the CPU.
    """
    if name not in CHOICES:
        raise ValueError(f"device must be one of {CHOICES}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was requested but torch.cuda.is_available() is False: this torch "
            f"({torch.__version__}) sees no CUDA GPU. Run with --device cpu (or auto), or install a "
            "CUDA build of torch==2.13.0 on a machine with an NVIDIA GPU."
        )
    return torch.device(name)


def describe(device: torch.device) -> str:
    """A short human description, e.g. 'cpu (2 threads)' or 'cuda (NVIDIA H100)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
