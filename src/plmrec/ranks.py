"""Which process of a torchrun/accelerate job this is, from the environment the launcher sets.

Kept free of torch so that tracking can ask without importing it.
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
