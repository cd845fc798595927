"""Embedding matrices: float32, one row per item or user, L2-normalised so that the inner
product is the cosine similarity."""

from __future__ import annotations

import numpy as np
import pandas as pd


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def stack(column: pd.Series) -> np.ndarray:
    """A parquet list column of vectors as one float32 matrix."""
    return np.ascontiguousarray(np.stack(column.to_numpy()), dtype=np.float32)
