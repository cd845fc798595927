"""Checks and digests of input files, shared by the loaders, the download code and the stages."""

from __future__ import annotations

import hashlib
from pathlib import Path

from plmrec.errors import DataLoadError


def require_data_file(path: str | Path) -> Path:
    """The path, if it names a non-empty file; else a DataLoadError that says which problem."""
    path = Path(path)
    if not path.exists():
        raise DataLoadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataLoadError(f"{path}: file is empty (0 bytes)")
    return path


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (sha256 for downloads, md5 as DVC uses)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
