"""Which process of a torchrun (or Kubeflow Training Operator) job this is, from the environment
the launcher sets, and the two collective calls the training code needs.

Importing this module does not import torch, so tracking can ask for the rank cheaply.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes in this training job (torchrun sets WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_distributed(device) -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); (world, rank)."""
    if world_size() == 1:
        return 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank()
