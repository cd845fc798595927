"""Where a model runs and in which precision: CUDA when present (the local rank's GPU under
torchrun), else the CPU; bf16 on GPUs that support it."""

from __future__ import annotations

import os

import torch

from plmrec.errors import TrainingConfigError


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N`; a clear error when CUDA is asked for and absent."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingConfigError(f"device '{name}' requested but CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision
